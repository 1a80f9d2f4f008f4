"""Crash matrix: every stage SIGKILLed at chosen points, rerun, and compared with an uninterrupted run.

Each case runs one stage of the real CLI (`cli.main`, as `xel-cli` does) in its own
process with `XEL_CRASH_AT` set, so `pipeline.core.io.crash_point` kills it with SIGKILL at
a deterministic point of an atomic write: a temporary file cut to half its bytes
(`half-written`), complete but not renamed (`before-rename`), or in place with what
follows not yet done (`after-rename`: the next output, the manifest, the cleanup). Then:

- after the kill: exit by SIGKILL; the stage's manifest is absent unless the kill came
  after it; every file under a final name is whole (equal to the uninterrupted run's
  output, or, for chunks and checkpoints, loadable);
- the rerun, a fresh process without the hook, finishes; its outputs equal the
  uninterrupted run's (Parquet row-equal, HDF5 ids equal and vectors allclose, JSON,
  .tab and Markdown equal, model and checkpoint tensors equal, the reader's folder
  file by file) and so does its stage key; finished encode chunks and train and rerank
  checkpoints are reused (the log line, the manifest's `chunks_resumed`), not redone, and
  a checkpoint of the last epoch is said to be complete, not resumed; no temporary file,
  chunk folder, checkpoint (a finished stage deletes it) or lock is left.

The reader's stage (rerank) runs on a copy of the plain run with `[rerank]` on; a
reader folder left by the kill (an earlier epoch's, perhaps) must load whole.

Processes are forked from a forkserver that has imported the CLI, torch and
transformers once: a cold `python cli.py` spends about 6 s importing torch on this
project's 2-core machine, the tiny stages well under one. One more case kills a cold
`python cli.py evaluate` the same way, and `tests/encode/test_encode.py` a cold encode.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_run_config
from pipeline.candidates.tantivy_index import INDEX_FOLDER, TantivyNameIndex
from pipeline.core import checked_files
from pipeline.core.io import CRASH_AT, CRASH_POINTS
from pipeline.core.manifest import read_manifest as manifest
from pipeline.model.reader import load_reader
from pipeline.rerank.stage import READER as READER_FOLDER

# The paper's stages, which the plain run has, and the reader's, run on a copy of it with the reader on.
PAPER_STAGES = ("triage", "encode", "train", "evaluate")
STAGES = ("triage", "encode", "train", "rerank", "evaluate")
# Small chunks so the tiny run's 20 distinct texts make 5 encode chunks.
ENCODER = {"chunk_texts": 4}
# Early stopping with checkpoints between evaluations (every 2 epochs, evaluations every 3).
EARLY_STOP = {"epochs": 30, "eval_every": 3, "checkpoint_every": 2, "patience": 1}
# The weight average, evaluated (and so kept) only at the last epoch: model.pt holds the average a
# resumed run must have restored from its checkpoint.
AVERAGED = {"epochs": 6, "eval_every": 6, "checkpoint_every": 2, "patience": 0, "weight_average": 0.5}
# The reader, tiny: a checkpoint and (when dev improves) the reader folder after each of two epochs.
READER = {
    "enabled": True,
    "top_k": 3,
    "max_seq_tokens": 80,
    "max_context_tokens": 24,
    "epochs": 2,
    "batch_mentions": 4,
    "learning_rate": 1e-3,
}


@dataclass(frozen=True)
class Crash:
    stage: str
    point: str  # one of pipeline.core.io.CRASH_POINTS
    file: str  # glob of the file's name
    n: int  # killed at the n-th time the point is reached for such a file
    when: str  # what the kill stands for
    config: str = "plain"  # "early-stop": train with EARLY_STOP; "averaged": with AVERAGED; "reader": READER on
    force: bool = False  # the killed run is `--force` over a finished stage

    @property
    def id(self) -> str:
        return f"{self.stage}-{self.when}"


CRASHES = [
    # stage      point            file                   n  what the kill stands for
    Crash("triage", "half-written", "config.json", 1, "before-the-stage-starts"),
    Crash("triage", "before-rename", "entities.parquet", 1, "early"),
    Crash("triage", "half-written", "candidates.parquet", 1, "mid-way-while-writing"),
    Crash("triage", "after-rename", "report.json", 1, "outputs-written-manifest-not"),
    Crash("triage", "half-written", "manifest.json", 1, "while-writing-the-manifest"),
    Crash("encode", "after-rename", "chunk-*.npz", 1, "early-after-the-first-chunk"),
    Crash("encode", "half-written", "chunk-*.npz", 3, "mid-way-while-writing-a-chunk"),
    Crash("encode", "before-rename", "vectors.h5", 1, "vectors-written-not-renamed"),
    Crash("encode", "after-rename", "vectors.h5", 1, "vectors-written-manifest-not"),
    Crash("encode", "after-rename", "manifest.json", 1, "finished-chunks-not-yet-deleted"),
    Crash("train", "after-rename", "last.pt", 1, "early-after-the-first-checkpoint"),
    Crash("train", "half-written", "last.pt", 2, "mid-way-while-writing-a-checkpoint"),
    Crash("train", "after-rename", "model.pt", 1, "model-written-history-and-manifest-not"),
    Crash("train", "before-rename", "manifest.json", 1, "while-writing-the-manifest"),
    Crash("train", "after-rename", "last.pt", 2, "checkpoint-between-evaluations", config="early-stop"),
    Crash("train", "after-rename", "last.pt", 3, "early-stop-checkpoint-model-not", config="early-stop"),
    Crash("train", "after-rename", "last.pt", 1, "averaged-weights-after-the-first-checkpoint", config="averaged"),
    Crash("train", "after-rename", "manifest.json", 1, "finished-checkpoint-not-yet-deleted"),
    Crash("rerank", "after-rename", "last.pt", 1, "early-after-the-first-checkpoint", config="reader"),
    Crash("rerank", "half-written", "last.pt", 2, "mid-way-while-writing-a-checkpoint", config="reader"),
    Crash("rerank", "after-rename", "reader", 1, "reader-folder-written-checkpoint-not", config="reader"),
    Crash("rerank", "before-rename", "reader_scores.parquet", 1, "scores-written-not-renamed", config="reader"),
    Crash("rerank", "after-rename", "history.parquet", 1, "outputs-written-manifest-not", config="reader"),
    Crash("rerank", "half-written", "manifest.json", 1, "while-writing-the-manifest", config="reader"),
    Crash("rerank", "after-rename", "manifest.json", 1, "finished-checkpoint-not-yet-deleted", config="reader"),
    Crash("evaluate", "before-rename", "scores.parquet", 1, "early"),
    Crash("evaluate", "half-written", "system.tab", 1, "mid-way-while-writing"),
    Crash("evaluate", "after-rename", "report.md", 1, "outputs-written-manifest-not"),
    Crash("evaluate", "half-written", "predictions.parquet", 1, "rerun-over-finished-outputs", force=True),
]


# --- processes ------------------------------------------------------------------------------


def _cli_process(args: list[str], crash_at: str | None, log_path: str) -> None:
    """Body of one CLI process: output to `log_path`, one torch thread, `XEL_CRASH_AT` as given."""
    handle = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    os.environ.pop(CRASH_AT, None)
    if crash_at:
        os.environ[CRASH_AT] = crash_at
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # what xel-cli's main reads (pipeline.core.threads)
    from cli import main

    main(args, prog_name="xel-cli")  # exits with the command's code, as xel-cli does


@pytest.fixture(scope="module")
def cli_processes():
    """`run(args, log, crash_at=None) -> (exit code, output)`: the CLI in a new forked process."""
    context = multiprocessing.get_context("forkserver")
    # Imported once in the server (this module too, for `_cli_process`); nothing has run a
    # torch op there, so forking is safe.
    context.set_forkserver_preload(
        [
            "cli",
            "pipeline.triage.stage",
            "pipeline.encode.stage",
            "pipeline.train.stage",
            "pipeline.train.batches",
            "pipeline.rerank.stage",
            "pipeline.evaluate.stage",
            "pipeline.encoders.build",
            "transformers.models.auto.tokenization_auto",
            "transformers.models.bert.modeling_bert",
            "transformers.models.bert.tokenization_bert",
            "transformers.convert_slow_tokenizer",
            "matplotlib.pyplot",
            "matplotlib.backends.backend_agg",
            __name__,
        ]
    )

    def run(args: list[object], log: Path, crash_at: str | None = None) -> tuple[int, str]:
        process = context.Process(target=_cli_process, args=([str(a) for a in args], crash_at, str(log)))
        process.start()
        process.join(timeout=120)
        if process.exitcode is None:
            process.kill()
            process.join()
            pytest.fail(f"xel-cli {args} did not finish in 120 s")
        return process.exitcode, log.read_text(encoding="utf-8", errors="replace")

    return run


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path, cli_processes) -> dict:
    """Uninterrupted runs, one process per stage: the paper's four stages; train with early stopping and with the
    weight average; the reader over the plain run's train."""
    folder = tmp_path_factory.mktemp("crash-reference")
    configs = {
        "plain": write_run_config(folder, tiny_encoder_dir, encoder=ENCODER),
        "early-stop": write_run_config(
            folder, tiny_encoder_dir, name="early-stop.toml", encoder=ENCODER, train=EARLY_STOP
        ),
        "averaged": write_run_config(folder, tiny_encoder_dir, name="averaged.toml", encoder=ENCODER, train=AVERAGED),
        "reader": write_run_config(folder, tiny_encoder_dir, name="reader.toml", encoder=ENCODER, rerank=READER),
    }
    runs = {variant: folder / ("run" if variant == "plain" else f"run-{variant}") for variant in configs}
    for stage in PAPER_STAGES:
        code, output = cli_processes(
            [stage, "--config", configs["plain"], "--run-dir", runs["plain"]], folder / f"{stage}.log"
        )
        assert code == 0, output
    for variant in ("early-stop", "averaged"):
        copy_stages(runs["plain"], runs[variant], ("triage", "encode"))
        code, output = cli_processes(
            ["train", "--config", configs[variant], "--run-dir", runs[variant]], folder / f"{variant}.log"
        )
        assert code == 0, output
    copy_stages(runs["plain"], runs["reader"], ("triage", "encode", "train"))
    code, output = cli_processes(
        ["rerank", "--config", configs["reader"], "--run-dir", runs["reader"]], folder / "reader.log"
    )
    assert code == 0, output
    epochs = pl.read_parquet(runs["early-stop"] / "train" / "history.parquet")["epoch"].to_list()
    # The early-stop cases need a run that stops early, with a checkpoint (epoch 4) between evaluations.
    assert 6 <= epochs[-1] < EARLY_STOP["epochs"], epochs
    return {"configs": configs, "runs": runs}


def copy_stages(source: Path, target: Path, stages: tuple[str, ...]) -> None:
    for stage in stages:
        shutil.copytree(source / stage, target / stage)


# --- comparisons ------------------------------------------------------------------------------


def same_value(one, two) -> bool:
    """Equality through dicts, lists and tensors (what torch.save'd payloads hold)."""
    if isinstance(one, torch.Tensor):
        return isinstance(two, torch.Tensor) and torch.equal(one, two)
    if isinstance(one, dict):
        return isinstance(two, dict) and one.keys() == two.keys() and all(same_value(one[k], two[k]) for k in one)
    if isinstance(one, (list, tuple)):
        return len(one) == len(two) and all(same_value(a, b) for a, b in zip(one, two))
    return bool(one == two) or (isinstance(one, float) and np.isnan(one) and np.isnan(two))


def assert_same_output(path: Path, reference: Path) -> None:
    """`path` holds what `reference` holds: tables row-equal, vectors allclose, files equal; a folder (the
    reader) holds the same files, each equal."""
    if reference.is_dir():
        assert path.is_dir(), f"{path} is missing"
        assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in reference.iterdir()), path
        for item in sorted(reference.iterdir()):
            assert_same_output(path / item.name, item)
        return
    assert path.is_file(), f"{path} is missing"
    if path.suffix == ".parquet":
        assert pl.read_parquet(path).equals(pl.read_parquet(reference)), path
    elif path.suffix == ".h5":
        with h5py.File(path, "r") as one, h5py.File(reference, "r") as two:
            assert dict(one.attrs).keys() == dict(two.attrs).keys()
            for group in ("mentions", "entities"):
                assert one[group]["id"][:].tolist() == two[group]["id"][:].tolist(), (path, group)
                for name in ("name", "context"):
                    assert np.allclose(one[group][name][:], two[group][name][:], rtol=1e-5, atol=1e-6), (path, group)
    elif path.suffix == ".json":
        assert json.loads(path.read_text(encoding="utf-8")) == json.loads(reference.read_text(encoding="utf-8")), path
    elif path.suffix == ".pt":
        one, two = (torch.load(p, map_location="cpu", weights_only=False) for p in (path, reference))
        assert same_value(one, two), path
    elif path.suffix == ".safetensors":
        assert same_value(load_file(path), load_file(reference)), path
    elif path.suffix == ".npz":  # zip entries carry their write time: compare the arrays
        with np.load(path) as one, np.load(reference) as two:
            assert one.files == two.files and all(np.array_equal(one[k], two[k]) for k in one.files), path
    else:  # .tab, .md, .png, .faiss, a tokenizer's files
        assert path.read_bytes() == reference.read_bytes(), path


def assert_same_tantivy_index(folder: Path, reference_folder: Path) -> None:
    """A tantivy index (files named by random segment ids) shortlists as the reference does,
    queried with its own names, each less its second letter."""
    names = pl.read_parquet(reference_folder.parent / "roman_keys.parquet")["surface_roman"]
    queries = names.str.slice(0, 1) + names.str.slice(2)
    one, two = (TantivyNameIndex.load(f.parent) for f in (folder, reference_folder))
    assert one.n_names == two.n_names > 0, folder
    shortlist = two.shortlist(queries, top_n=5)
    assert shortlist["query"].n_unique() > len(names) // 2
    assert one.shortlist(queries, top_n=5).equals(shortlist), folder


def assert_whole(path: Path) -> None:
    """A file under a final name that the reference lacks (a chunk, a checkpoint) or a folder that may differ from
    it (the reader of an earlier epoch) loads completely."""
    if path.is_dir():
        load_reader(path, torch.device("cpu"))  # E402 when damaged
        return
    if path.suffix == ".npz":
        with np.load(path) as saved:
            assert {"units", "context", "span_rows", "span"} <= set(saved.files)
            for name in saved.files:
                saved[name]  # reads (and CRC-checks) every array
    elif path.suffix == ".pt":
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        assert checkpoint["epoch"] >= 1 and checkpoint["key"]
    else:
        raise AssertionError(f"unexpected file {path}")


# --- the matrix ---------------------------------------------------------------------------------


@pytest.mark.parametrize("crash", CRASHES, ids=[crash.id for crash in CRASHES])
def test_killed_stage_reruns_to_the_uninterrupted_result(
    crash: Crash, reference: dict, cli_processes, tmp_path: Path
) -> None:
    assert crash.point in CRASH_POINTS
    config, reference_run = reference["configs"][crash.config], reference["runs"][crash.config]
    upstream = tuple(stage for stage in STAGES[: STAGES.index(crash.stage)] if (reference_run / stage).is_dir())
    run_dir = tmp_path / "run"
    copy_stages(reference_run, run_dir, upstream + ((crash.stage,) if crash.force else ()))
    stage_dir, reference_dir = run_dir / crash.stage, reference_run / crash.stage
    command = [crash.stage, "--config", config, "--run-dir", run_dir]

    code, output = cli_processes(
        [*command, *(["--force"] if crash.force else [])],
        tmp_path / "killed.log",
        crash_at=f"{crash.point}:{crash.file}:{crash.n}",
    )
    assert code == -signal.SIGKILL, f"not killed at {crash.point} of {crash.file} #{crash.n}:\n{output}"

    # Where it was killed: a temporary file of that name is left (the kill skipped its cleanup),
    # or, after the rename, the file itself is there.
    written_in = run_dir if crash.file == "config.json" else stage_dir
    temporary = list(written_in.rglob(f".{crash.file}.*.tmp"))
    if crash.point == "after-rename":
        assert list(written_in.rglob(crash.file))
    else:
        assert temporary, f"no temporary file of {crash.file}"
    # No half-written file under a final name: each is the finished run's file, or whole.
    finished_outputs = manifest(reference_dir)["outputs"]
    if (stage_dir / "manifest.json").exists():
        assert crash.file == "manifest.json" and crash.point == "after-rename"
    for path in sorted(stage_dir.rglob("*")) if stage_dir.is_dir() else ():
        name = str(path.relative_to(stage_dir))
        if not path.is_file() or any(part.endswith(".tmp") for part in path.parts) or name == "manifest.json":
            continue
        if path.relative_to(stage_dir).parts[0] == READER_FOLDER:  # a folder output: checked as a whole below
            continue
        if INDEX_FOLDER in path.parts and "kb-index" in path.parts:  # compared as a whole below
            continue
        if path.name == checked_files.RECORD_NAME:  # lists the tantivy files (random names): checked, not compared
            assert checked_files.damage(path) is None, path
            continue
        if name in finished_outputs or "kb-index" in path.parts:  # an output, or a finished KB index folder
            assert_same_output(path, reference_dir / name)
        else:
            assert_whole(path)
    for folder in sorted(stage_dir.glob(f"kb-index/names-*/{INDEX_FOLDER}")):
        assert_same_tantivy_index(folder, reference_dir / folder.relative_to(stage_dir))
    if (stage_dir / READER_FOLDER).is_dir():  # whole: the best epoch so far (not yet the final one, perhaps)
        assert_whole(stage_dir / READER_FOLDER)
    saved_chunks = sorted(stage_dir.glob("work-*/chunk-*.npz"))
    checkpoint = stage_dir / "checkpoints" / "last.pt"
    checkpoint_epoch = torch.load(checkpoint, weights_only=False)["epoch"] if checkpoint.is_file() else None

    code, output = cli_processes(command, tmp_path / "rerun.log")
    assert code == 0, output
    assert "Traceback" not in output
    assert "taking over a stale lock" in output  # the killed run's lock
    rerun = manifest(stage_dir)
    assert rerun["key"] == manifest(reference_dir)["key"]
    assert rerun["outputs"] == finished_outputs
    for name in finished_outputs:
        assert_same_output(stage_dir / name, reference_dir / name)
    # Finished work is reused, not redone.
    if crash.stage == "encode" and crash.file != "manifest.json":
        assert rerun["counts"]["chunks_resumed"] == len(saved_chunks) > 0
        assert f"resuming encode: {len(saved_chunks)} of {rerun['counts']['chunks']} chunks" in output
    if crash.stage == "encode" and crash.file == "manifest.json":
        assert output.splitlines()[-1].startswith("encode: up to date")
    if crash.stage == "train":
        assert checkpoint_epoch is not None
    if crash.stage in ("train", "rerank") and checkpoint_epoch is not None:
        assert_resumed_as_it_should(crash, output, checkpoint_epoch, manifest(reference_dir))
        # A finished stage keeps no checkpoint: deleted once its manifest is written (or, killed in between,
        # by the rerun that finds the stage up to date).
        assert not (stage_dir / "checkpoints").exists()
    # Nothing of the interrupted run is left behind.
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
    assert not list(run_dir.glob("encode/work-*")), "encode's chunk folder was left behind"
    assert not (run_dir / ".xel.lock").exists()


def assert_resumed_as_it_should(crash: Crash, output: str, checkpoint_epoch: int, finished: dict) -> None:
    """The rerun of a killed train or rerank says what it does with the checkpoint of `checkpoint_epoch`: nothing,
    up to date (killed after the manifest); resume at the next epoch; or, holding the last epoch trained (the
    uninterrupted run's, `finished` its manifest), that training is complete and only the outputs are written."""
    training = "training" if crash.stage == "train" else "the reader's training"
    last_epoch = finished["counts"]["epochs"] if crash.stage == "train" else READER["epochs"]
    if crash.file == "manifest.json" and crash.point == "after-rename":
        assert output.splitlines()[-1].startswith(f"{crash.stage}: up to date"), output
        assert "/checkpoints/last.pt: the stage has finished, so nothing resumes from it" in output
    elif checkpoint_epoch < last_epoch:
        assert f"resuming {training} at epoch {checkpoint_epoch + 1} " in output
    else:
        assert f"{training} is complete (the checkpoint " in output and "resuming" not in output
        assert f"holds epoch {checkpoint_epoch}, the last): nothing is trained again" in output


def test_the_matrix_covers_every_stage_and_point() -> None:
    assert {crash.stage for crash in CRASHES} == set(STAGES)
    for stage in STAGES:
        assert {crash.point for crash in CRASHES if crash.stage == stage} == set(CRASH_POINTS), stage
    assert len({crash.id for crash in CRASHES}) == len(CRASHES)


def test_the_hook_is_inert_unless_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without XEL_CRASH_AT, or at another point, file or count, a write goes through."""
    from pipeline.core.io import write_text_atomic

    monkeypatch.delenv(CRASH_AT, raising=False)
    write_text_atomic(tmp_path / "a.txt", "whole")
    monkeypatch.setenv(CRASH_AT, "after-rename:other.txt:1")
    write_text_atomic(tmp_path / "a.txt", "whole")
    monkeypatch.setenv(CRASH_AT, "after-rename:a.txt:99")
    write_text_atomic(tmp_path / "a.txt", "whole")
    assert (tmp_path / "a.txt").read_text() == "whole" and not list(tmp_path.glob(".*.tmp"))


def test_the_hook_kills_a_cold_cli_process_too(reference: dict, cli_processes, tmp_path: Path) -> None:
    """One case as a user runs it: `python cli.py` started from scratch, not forked."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "run"
    copy_stages(reference["runs"]["plain"], run_dir, PAPER_STAGES[:3])
    command = [
        sys.executable,
        str(root / "cli.py"),
        "evaluate",
        "--config",
        str(reference["configs"]["plain"]),
        "--run-dir",
        str(run_dir),
    ]
    environment = {**os.environ, CRASH_AT: "after-rename:report.md:1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run_dir / "evaluate" / "report.md").is_file() and not (run_dir / "evaluate" / "manifest.json").exists()
    code, output = cli_processes(
        ["evaluate", "--config", reference["configs"]["plain"], "--run-dir", run_dir], tmp_path / "rerun.log"
    )
    assert code == 0, output
    for name in manifest(reference["runs"]["plain"] / "evaluate")["outputs"]:
        assert_same_output(run_dir / "evaluate" / name, reference["runs"]["plain"] / "evaluate" / name)
