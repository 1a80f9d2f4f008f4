"""The one table of bench/gpu.sh: the figures its benches appended as JSON lines, fp32 and bf16 side by side.

    python bench/gpu_table.py FIGURES.jsonl [--device cuda]

Each line is {"bench", "precision", "measure", "value"} or, for a bench that did not finish,
{"bench", "status"}. Prints one row per (bench, measure) with its value at fp32 and at bf16 and
bf16/fp32, then one line per bench that timed out or failed. Exit 1 when one did.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figures", type=Path)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    lines = [json.loads(line) for line in args.figures.read_text(encoding="utf-8").splitlines() if line.strip()]
    values: dict[tuple[str, str], dict[str, float]] = {}
    for line in lines:
        if "value" in line:
            values.setdefault((line["bench"], line["measure"]), {})[line["precision"]] = line["value"]
    print(
        f"xel benches on {args.device} ({device_name(args.device)}), torch {torch.__version__}"
        f"{' (dry run: tiny sizes, not speed)' if args.device == 'cpu' else ''}"
    )
    print(f"{'bench':<7} {'measure':<20} {'fp32':>10} {'bf16':>10} {'bf16/fp32':>10}")
    for (bench, measure), by_precision in values.items():
        cells = [f"{by_precision[p]:>10.4g}" if p in by_precision else f"{'-':>10}" for p in PRECISIONS]
        ratio = (
            f"{by_precision['bf16'] / by_precision['fp32']:>9.2f}x"
            if set(PRECISIONS) <= set(by_precision) and by_precision["fp32"]
            else f"{'-':>10}"
        )
        print(f"{bench:<7} {measure:<20} {' '.join(cells)} {ratio}")
    unfinished = [line for line in lines if "status" in line]
    for line in unfinished:
        print(f"{line['bench']}: {line['status']}")
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
