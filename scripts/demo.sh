#!/usr/bin/env bash
# Set up (first time only) and run all four stages on the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/xel-cli run --config configs/demo.toml "$@"
