#!/usr/bin/env bash
# Set up (first time only) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The linter first (a second): unused names, undefined names, unsorted imports (pyproject's [tool.ruff]).
.venv/bin/ruff check .
# The formatter's check: code is laid out as `ruff format` writes it (run that to fix).
.venv/bin/ruff format --check .
# -rs: every skipped test prints its reason (a missing data set, package or GPU).
# Arguments go to pytest: `scripts/test.sh -m "not slow"` is the quick lane.
exec .venv/bin/python -m pytest -q -rs "$@"
