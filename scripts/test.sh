#!/usr/bin/env bash
# Set up (first time only) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# -rs: every skipped test prints its reason (a missing data set, package or GPU).
exec .venv/bin/python -m pytest -q -rs "$@"
