"""bench/gpu.sh's dry run: `--device cpu` runs the encode, train and link benches at fp32 and bf16 on
tiny sizes and prints the one table, with the real offline encoder and MEANTIME.

Marked `slow` (a few minutes on a shared 2-core CPU: four xel-cli processes each load the encoder);
skipped when ../shared/data/meantime is not there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEANTIME = ROOT.parent / "shared" / "data" / "meantime"


@pytest.mark.slow
def test_the_gpu_bench_dry_run_prints_every_figure_at_both_precisions(
    default_encoder_dir: Path, tmp_path: Path
) -> None:
    if not (MEANTIME / "mentions.jsonl").is_file():
        pytest.skip(f"MEANTIME not found at {MEANTIME}")
    env = {**os.environ, "PYTHON": sys.executable, "XEL_CACHE": str(default_encoder_dir.parent)}
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["encode", "train", "link"]
    assert lines[3].startswith("xel benches on cpu") and "dry run" in lines[3]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[5:]}
    assert set(rows) == {
        ("encode", "texts/s"),
        ("encode", "context"),
        ("encode", "name"),
        ("train", "examples/s"),
        ("link", "mentions/s"),
    }
    for bench, measure in (("encode", "texts/s"), ("train", "examples/s"), ("link", "mentions/s")):
        fp32, bf16, ratio = rows[(bench, measure)]
        assert float(fp32) > 0 and float(bf16) > 0 and ratio.endswith("x")
    figures = [json.loads(line) for line in (tmp_path / "figures.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(f["bench"], f["precision"]) for f in figures} == {
        (b, p) for b in ("encode", "train", "link") for p in ("fp32", "bf16")
    }
    # The cosine of bf16's vectors to fp32's, as the encode bench measured them.
    assert all(f["value"] > 0.95 for f in figures if f["measure"].endswith("cos to fp32"))


def test_a_bad_device_is_one_line_error() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("Error: bench/gpu.sh --device: 'gpu' is not cuda, cuda:N or cpu")
