"""Data-parallel training under torchrun (gloo, 2 CPU processes) against a single-process run.

The real CLI runs under `python -m torch.distributed.run`. With dropout off, both runs
take the same steps (same seed, same global batches and negatives, gradients averaged
over the ranks' shares), so the trained weights agree up to float summation order.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from click.testing import CliRunner

from cli import main
from conftest import torchrun, write_run_config
from pipeline.core.distributed import World, world_from_environment
from pipeline.core.errors import ConfigError
from pipeline.core.manifest import read_manifest
from pipeline.train.batches import rank_share

ROOT = Path(__file__).resolve().parents[2]
# Dropout draws other masks on other ranks, so only a run without it can match step for step.
DDP_TRAIN = {"dropout": 0.0, "epochs": 6, "batch_mentions": 3, "eval_every": 2}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    folder = tmp_path_factory.mktemp("ddp-run")
    config = write_run_config(folder, tiny_encoder_dir, train=DDP_TRAIN)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return {"config": config, "run_dir": folder / "run"}


def test_world_from_environment() -> None:
    assert world_from_environment({}) == World()
    assert world_from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 1, 4)
    for bad in ({"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two"}):
        with pytest.raises(ConfigError, match="E203"):
            world_from_environment(bad)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_rank_shares_are_disjoint_and_cover_the_batch(size: int) -> None:
    for ranks in (1, 2, 3, 8):
        shares = [list(range(size))[rank_share(size, World(rank, rank, ranks))] for rank in range(ranks)]
        assert sum(shares, []) == list(range(size))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_two_gloo_processes_match_one_process(single_run: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(single_run["run_dir"], run_dir)
    done = torchrun("train", "--config", single_run["config"], "--run-dir", run_dir, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("train: done") == 1  # only rank 0 reports

    single = torch.load(single_run["run_dir"] / "train" / "model.pt", map_location="cpu", weights_only=False)
    parallel = torch.load(run_dir / "train" / "model.pt", map_location="cpu", weights_only=False)
    assert single["model"].keys() == parallel["model"].keys()
    assert not any(key.startswith("module.") for key in parallel["model"])  # the ranker's own names, not DDP's
    for name, weights in single["model"].items():
        torch.testing.assert_close(parallel["model"][name], weights, rtol=1e-4, atol=1e-5, msg=name)
    assert parallel["best_epoch"] == single["best_epoch"]

    history = [pl.read_parquet(folder / "train" / "history.parquet") for folder in (single_run["run_dir"], run_dir)]
    assert history[0]["epoch"].to_list() == history[1]["epoch"].to_list()
    assert history[1]["loss"].to_numpy() == pytest.approx(history[0]["loss"].to_numpy(), rel=1e-4, abs=1e-6)
    assert history[1]["dev_accuracy"].to_list() == history[0]["dev_accuracy"].to_list()
    manifest = read_manifest(run_dir / "train")
    assert manifest["world_size"] == 2
    assert not (run_dir / ".xel.lock").exists()


def test_an_error_under_torchrun_is_one_coded_line(single_run: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(single_run["run_dir"], run_dir)
    done = torchrun(
        "train", "--config", single_run["config"], "--run-dir", run_dir, "--set", "train.train_languages=xx"
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert errors and all("[E112]" in line and "mentions.parquet" in line for line in errors)


def test_two_gloo_processes_match_one_process_with_the_nil_option(single_run: dict, tmp_path: Path) -> None:
    """The NIL option (train.nil_candidate) under DDP: same batch split, same weights as one process."""
    runs = {kind: tmp_path / kind for kind in ("single", "parallel")}
    for run_dir in runs.values():
        shutil.copytree(single_run["run_dir"], run_dir)
    nil_option = ("--set", "train.nil_candidate=true", "--force")
    result = CliRunner().invoke(
        main, ["train", "--config", str(single_run["config"]), "--run-dir", str(runs["single"]), *nil_option]
    )
    assert result.exit_code == 0, result.output
    done = torchrun("train", "--config", single_run["config"], "--run-dir", runs["parallel"], *nil_option)
    assert done.returncode == 0, done.stdout + done.stderr
    single, parallel = (
        torch.load(run_dir / "train" / "model.pt", map_location="cpu", weights_only=False) for run_dir in runs.values()
    )
    assert single["shape"]["nil_candidate"] and any(key.startswith("nil_entity.") for key in single["model"])
    assert single["model"].keys() == parallel["model"].keys()
    for name, weights in single["model"].items():
        torch.testing.assert_close(parallel["model"][name], weights, rtol=1e-4, atol=1e-5, msg=name)
    history = [pl.read_parquet(run_dir / "train" / "history.parquet") for run_dir in runs.values()]
    assert history[1]["loss"].to_numpy() == pytest.approx(history[0]["loss"].to_numpy(), rel=1e-4, abs=1e-6)
