#!/usr/bin/env bash
# Every GPU figure in one call: the encode, train and link benches on one device at fp32 and bf16,
# then one table (figure per bench and precision, and bf16's ratio to fp32).
#
#   bench/gpu.sh [--device cuda|cpu] [--out DIR]
#
# On cuda the sizes fit 8 minutes (each bench also has its own time limit, so a slow one shows as
# "timed out" in the table and the rest still run): encode over 2,000 MEANTIME named mentions at
# 512 sub-words, training at the paper's ranker sizes, link of 10,000 mentions against MEANTIME's
# KB (KB_ENTITIES=N for a DBpedia KB of N entities; needs the `bench` extra). `--device cpu` is a
# dry run with tiny sizes (a 64-sub-word context, a few mentions) that checks the plumbing, not
# speed. Needs ../shared/data/meantime and the offline encoder build (pipeline/encoders/build.py).
# PYTHON picks the interpreter (default: python3).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "Error: bench/gpu.sh: unknown argument '$1'; see bench/gpu.sh --help" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in
  cuda|cuda:*|cpu) ;;
  *) echo "Error: bench/gpu.sh --device: '$DEVICE' is not cuda, cuda:N or cpu; give one of them" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/xel-gpu-bench.XXXXXX")}"
mkdir -p "$OUT"
RECORD="$OUT/figures.jsonl"
: > "$RECORD"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DEVICE" = cpu ]; then  # dry run: every path once, in seconds
  ENCODE=(--limit 8 --repeats 1 --max-context-tokens 64)
  TRAIN=(--mentions 300 --entities 200 --batches 2 --rounds 1 --small)
  LINK=(--sizes 20 --second-size 10 --chunk-mentions 20 --kb-entities 286 --epochs 1 --train-limit 10
        --max-context-tokens 64)
  LIMITS=(300 120 600)
else
  ENCODE=(--limit 2000 --repeats 2)
  TRAIN=(--mentions 5000 --entities 2000 --batches 50 --rounds 3)
  LINK=(--sizes 10000 --second-size 1000 --kb-entities "${KB_ENTITIES:-286}" --epochs 10)
  LIMITS=(120 60 270)
fi

step() {  # name, time limit in seconds, command...: its output to $OUT/name.log, a status line here
  local name="$1" limit="$2"; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  if [ $status -eq 124 ]; then
    echo "{\"bench\": \"$name\", \"status\": \"timed out after $limit s\"}" >> "$RECORD"
  elif [ $status -ne 0 ]; then
    echo "{\"bench\": \"$name\", \"status\": \"failed (exit $status), see $OUT/$name.log\"}" >> "$RECORD"
  fi
  echo "$name: exit $status in $((SECONDS - started)) s (log $OUT/$name.log)"
}

step encode "${LIMITS[0]}" "$PYTHON" bench/encode.py --device "$DEVICE" --precisions fp32,bf16 --precisions-only \
  --record "$RECORD" "${ENCODE[@]}"
step train "${LIMITS[1]}" "$PYTHON" bench/train.py --device "$DEVICE" --ours-only --precisions fp32,bf16 \
  --record "$RECORD" "${TRAIN[@]}"
step link "${LIMITS[2]}" "$PYTHON" bench/link.py --device "$DEVICE" --precisions fp32,bf16 --work "$OUT/link" \
  --record "$RECORD" "${LINK[@]}"
"$PYTHON" bench/gpu_table.py "$RECORD" --device "$DEVICE"
