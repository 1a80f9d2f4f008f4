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
    header = ["precision", "width", "micro", "en", "es", "ru", "Δ", "micro", "max", "|Δ", "lang|", "sd", "lang"]
    assert lines[-5].split() == [*header, "mentions/s", "speed"]
    reference = next(line for line in lines[-4:] if line.split()[:2] == ["fp32", "32"])
    assert reference.split()[6:9] == ["+0.000", "0.000", "0.000"] and reference.endswith("1.00x")


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("context_width", ROOT / "bench" / "context_width.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(precision: str, seed: int, en: float, es: float) -> dict:
    return {
        "precision": precision,
        "width": 512,
        "split": "test",
        "seed": seed,
        "micro_average": (en + es) / 2,
        "by_language": {"en": en, "es": es},
        "mentions_per_second": 10.0 if precision == "fp32" else 16.0,
        "run_seconds": 1.0,
    }


def test_seeds_are_averaged_and_the_largest_language_change_is_shown(capsys) -> None:
    bench = _bench()
    fp32 = bench.mean_row([_run("fp32", 13, 0.90, 0.80), _run("fp32", 17, 0.92, 0.84)])
    bf16 = bench.mean_row([_run("bf16", 13, 0.91, 0.83), _run("bf16", 17, 0.91, 0.83)])
    assert fp32["by_language"] == pytest.approx({"en": 0.91, "es": 0.82})
    assert fp32["seeds"] == [13, 17] and fp32["sd_language"] == pytest.approx(0.0283, abs=1e-4)  # es: 0.80, 0.84
    bench.print_table([fp32, bf16])
    out = capsys.readouterr().out
    assert "each row the mean of seeds 13, 17" in out
    bf16_line = next(line for line in out.splitlines() if line.startswith("bf16"))
    # es moved by 0.010 (0.82 -> 0.83), en not at all: the largest per-language change is 0.010; sd 0
    assert bf16_line.split()[5:9] == ["+0.005", "0.010", "0.000", "16.0"]


@pytest.mark.parametrize("given", ["a,b", "1.5", "13,13", " , "])
def test_seeds_that_are_not_distinct_whole_numbers_are_refused(given: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "context_width.py"), "--seeds", given, "--work", "/nonexistent"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--seeds: give distinct whole numbers, comma-separated" in result.stderr


def test_a_seed_folder_starts_from_the_first_seeds_triage_and_encode(tmp_path: Path) -> None:
    first = tmp_path / "fp32-512-s13"
    for stage in ("triage", "encode", "train"):
        (first / stage).mkdir(parents=True)
        (first / stage / "manifest.json").write_text(stage)
    _bench().seeded_folder(first, tmp_path / "fp32-512-s17")
    assert sorted(p.name for p in (tmp_path / "fp32-512-s17").iterdir()) == ["encode", "triage"]  # train: per seed
    (tmp_path / "fp32-512-s17" / "encode" / "manifest.json").write_text("its own")
    _bench().seeded_folder(first, tmp_path / "fp32-512-s17")  # a folder that exists is left as it is
    assert (tmp_path / "fp32-512-s17" / "encode" / "manifest.json").read_text() == "its own"
