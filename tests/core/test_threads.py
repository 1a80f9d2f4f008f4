"""Thread counts (issue 21 items 9 and 10): how xel picks them, that the ranker runs on one
thread, and that a run's output does not depend on the count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from conftest import DEMO_MENTIONS, write_run_config
from pipeline.core.threads import apply_threads, available_cpus, cgroup_cpu_quota, choose_threads, torch_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_threads():
    """Tests here change the process's thread count and variables: put them back."""
    threads = torch.get_num_threads()
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    yield
    torch.set_num_threads(threads)
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000", None),
        ("200000 100000", 2),
        ("150000 100000", 1),
        ("50000 100000", 1),
        ("garbage", None),
        ("", None),
    ],
)
def test_cgroup_quota_in_whole_cpus(tmp_path: Path, text: str, cpus: int | None) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text + "\n")
    assert cgroup_cpu_quota(cpu_max) == cpus
    assert cgroup_cpu_quota(tmp_path / "absent") is None


def test_the_count_is_the_option_then_omp_num_threads_then_the_usable_cpus(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    no_quota = tmp_path / "none"
    assert choose_threads(3, {"OMP_NUM_THREADS": "5"}, no_quota) == (3, "--threads")
    assert choose_threads(None, {"OMP_NUM_THREADS": "5"}, no_quota) == (5, "OMP_NUM_THREADS")
    assert choose_threads(None, {"OMP_NUM_THREADS": "4,2"}, no_quota) == (4, "OMP_NUM_THREADS")
    assert choose_threads(None, {"OMP_NUM_THREADS": "zero"}, no_quota) == (affinity, "available CPUs")
    assert choose_threads(None, {}, no_quota) == (affinity, "available CPUs")
    one_cpu = tmp_path / "cpu.max"
    one_cpu.write_text("100000 100000\n")  # a container limited to one CPU on a bigger machine
    assert available_cpus(one_cpu) == 1 and choose_threads(None, {}, one_cpu) == (1, "available CPUs")


def test_threads_option_sets_torch_and_the_openmp_variables() -> None:
    result = CliRunner().invoke(main, ["--threads", "2", "score", "--help"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    refused = CliRunner().invoke(main, ["--threads", "0", "score", "--help"])
    assert refused.exit_code == 2 and "[E206]" in refused.output and "--threads" in refused.output


def test_torch_threads_restores_the_count() -> None:
    apply_threads(2)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_the_ranker_trains_and_scores_on_one_thread_whatever_the_count(make_run_config, monkeypatch) -> None:
    import pipeline.model.features as features
    import pipeline.train.batches as batches

    seen = {"train": set(), "score": set()}
    train_epoch, score = batches.train_epoch, features._score_candidates

    def counting_epoch(*args, **kwargs):
        seen["train"].add(torch.get_num_threads())
        return train_epoch(*args, **kwargs)

    def counting_score(*args, **kwargs):
        seen["score"].add(torch.get_num_threads())
        return score(*args, **kwargs)

    monkeypatch.setattr(batches, "train_epoch", counting_epoch)
    monkeypatch.setattr(features, "_score_candidates", counting_score)
    result = CliRunner().invoke(main, ["--threads", "2", "run", "--config", str(make_run_config())])
    assert result.exit_code == 0, result.output
    assert seen == {"train": {1}, "score": {1}}
    assert torch.get_num_threads() == 2  # the rest of the run keeps the chosen count


def run_in_process(config: Path, run_dir: Path, threads: int, cache: Path) -> subprocess.CompletedProcess:
    """`xel-cli run` in a new process with `threads` OpenMP threads (as a user sets OMP_NUM_THREADS)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "XEL_CACHE": str(cache)}
    command = [sys.executable, str(ROOT / "cli.py"), "run", "--config", str(config), "--run-dir", str(run_dir)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_a_run_writes_the_same_system_file_at_one_and_two_threads(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    demo = DEMO_MENTIONS.parent
    # The demo's data and layer sizes: matrices wide enough for torch to split them over threads.
    train = {
        "min_type_count": 5,
        "features": ["name", "context", "type", "triage"],
        "name_hidden": [256],
        "context_hidden": [256],
        "final_hidden": [256, 128],
        "batch_mentions": 32,
        "learning_rate": 1e-3,
        "epochs": 10,
        "eval_every": 5,
    }
    config = write_run_config(
        tmp_path, tiny_encoder_dir, data={"mentions": demo / "mentions.jsonl", "kb": demo / "kb.jsonl"}, train=train
    )
    outputs = {}
    for threads in (1, 2):
        result = run_in_process(config, tmp_path / f"run-{threads}", threads, tmp_path / f"cache-{threads}")
        assert result.returncode == 0, result.stderr
        outputs[threads] = (tmp_path / f"run-{threads}" / "evaluate" / "system.tab").read_bytes()
    assert outputs[1] == outputs[2]
