"""bench/vs_release.py's plumbing on the tiny run: this commit against itself gives one row per side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_run_config

ROOT = Path(__file__).resolve().parents[2]


def in_git_checkout() -> bool:
    """The bench exports a release with `git archive`: it needs this checkout's git history."""
    try:
        found = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True)
    except OSError:
        return False
    return found.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not in_git_checkout(), reason="not a git checkout (or no git): nothing to export a release from")
def test_the_release_and_this_checkout_each_give_a_row(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    config = write_run_config(tmp_path, tiny_encoder_dir, run_dir=None)
    rows_path = tmp_path / "rows.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "vs_release.py"),
        "--rev",
        "HEAD",
        "--config",
        str(config),
        "--precisions",
        "auto",
        "--repeats",
        "1",
        "--work",
        str(tmp_path / "work"),
        "--release-dir",
        str(tmp_path / "release"),
        "--json",
        str(rows_path),
    ]
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "release" / "cli.py").exists()
    rows = json.loads(rows_path.read_text(encoding="utf-8"))
    assert [row["side"] for row in rows] == ["release HEAD", "this checkout, auto"]
    for row in rows:
        assert row["encode_seconds"] > 0 and row["link_mentions_per_second"] > 0
        assert set(row["micro_average"]) == {"all", "en", "es", "ru"}
    # The same code and config on the same data link the same.
    assert rows[0]["micro_average"] == rows[1]["micro_average"]
    assert "ratios against release HEAD" in result.stdout
