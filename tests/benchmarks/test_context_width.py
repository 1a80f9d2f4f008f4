"""bench/context_width.py's plumbing on the tiny run: one run per precision and width, one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_run_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_width_and_precision_gives_a_row(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    config = write_run_config(tmp_path, tiny_encoder_dir, run_dir=None)
    rows_path = tmp_path / "rows.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "context_width.py"),
        "--config",
        str(config),
        "--widths",
        "32,16",
        "--precisions",
        "fp32,int8",
        "--work",
        str(tmp_path / "work"),
        "--json",
        str(rows_path),
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "XEL_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(rows_path.read_text(encoding="utf-8"))
    assert [(row["precision"], row["width"]) for row in rows] == [
        ("fp32", 16),
        ("fp32", 32),
        ("int8", 16),
        ("int8", 32),
    ]
    for row in rows:
        assert 0 <= row["micro_average"] <= 1 and set(row["by_language"]) == {"en", "es", "ru"}
        assert row["split"] == "test" and row["mentions_per_second"] > 0
        settings = json.loads(
            (tmp_path / "work" / f"{row['precision']}-{row['width']}" / "encode" / "manifest.json").read_text(
                encoding="utf-8"
            )
        )["settings"]
        assert settings["max_context_tokens"] == row["width"]
    lines = result.stdout.splitlines()
    assert lines[-6] == "evaluation split test; reference: fp32 at 32 sub-words"
    assert lines[-5].split() == ["precision", "width", "micro", "en", "es", "ru", "Δ", "micro", "mentions/s", "speed"]
    reference = next(line for line in lines[-4:] if line.split()[:2] == ["fp32", "32"])
    assert reference.split()[-3:-2] == ["+0.000"] and reference.endswith("1.00x")
