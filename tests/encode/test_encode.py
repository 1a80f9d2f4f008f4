"""encode: resume after a kill, shards and their merge, on the tiny encoder.

The kill test runs `cli.py encode` as a real process and SIGKILLs it once its first
chunks are on disk; the rerun must finish from there and give the uninterrupted vectors.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY_CORPUS, TINY_KB, invoke, succeeded, tiny_mention_records, write_jsonl, write_run_config
from pipeline.core.errors import ConfigError
from pipeline.core.manifest import read_manifest
from pipeline.encode.shards import parse_shard, shard_from_environment, shard_slice

ROOT = Path(__file__).resolve().parents[2]
KB_NAMES = [entity["name"] for entity in TINY_KB]
MENTIONS = 1200
# One thread: the tiny model's batches are far too small to gain from more, and threads
# fighting over a busy CPU slow each forward pass a hundredfold.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch: pytest.MonkeyPatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what xel-cli's main reads (pipeline.core.threads)
    yield
    torch.set_num_threads(threads)


def many_mentions(count: int, seed: int = 0) -> list[dict]:
    """`count` mentions of KB names, each in its own sentence of corpus words (distinct contexts), each
    its own document (a text without doc offsets is its document's whole text, E120)."""
    rng = np.random.default_rng(seed)
    words = sorted({w.strip(".,") for sentence in TINY_CORPUS[:12] + TINY_CORPUS[24:] for w in sentence.split()})
    records = []
    for index in range(count):
        name = KB_NAMES[index % len(KB_NAMES)]
        before = " ".join(rng.choice(words, int(rng.integers(3, 12))))
        after = " ".join(rng.choice(words, int(rng.integers(3, 12))))
        text = f"{before} {name} {after}."
        start = len(before) + 1
        records.append(
            {
                "id": f"m{index:05d}",
                "doc_id": f"d{index}",
                "lang": "en",
                "text": text,
                "start": start,
                "end": start + len(name),
                "mention": name,
                "gold_kb_id": TINY_KB[index % len(TINY_KB)]["kb_id"],
                "entity_type": "PER",
                "split": ("train", "dev", "test")[index % 3],
            }
        )
    return records


def read_all(path: Path) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    with h5py.File(path, "r") as handle:
        return {
            group: ([v.decode() for v in handle[group]["id"][:]], handle[group]["name"][:], handle[group]["context"][:])
            for group in ("mentions", "entities")
        }


def assert_same_vectors(first: Path, second: Path, exact: bool = False) -> None:
    """Same ids in the same order; vectors equal up to float rounding (or bit for bit)."""
    one, two = read_all(first), read_all(second)
    for group in ("mentions", "entities"):
        assert one[group][0] == two[group][0], group
        for column in (1, 2):
            np.testing.assert_allclose(one[group][column], two[group][column], rtol=1e-5, atol=1e-6)
            if exact:
                np.testing.assert_array_equal(one[group][column], two[group][column])


@pytest.fixture(scope="module")
def big_triage(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    """A finished triage of MENTIONS mentions with the tiny encoder, and its config (chunks of 8 texts)."""
    folder = tmp_path_factory.mktemp("big")
    data = {
        "mentions": write_jsonl(folder / "data" / "mentions.jsonl", many_mentions(MENTIONS)),
        "kb": write_jsonl(folder / "data" / "kb.jsonl", TINY_KB),
    }
    config = write_run_config(
        folder,
        tiny_encoder_dir,
        data=data,
        # fp32: these tests compare vectors made in other batches (shards, resumed chunks) with a single
        # run's to float rounding; under bf16 autocast (`auto` on a CPU with native bf16) a text's vector
        # moves by up to ~1e-4 with the batch it is in.
        encoder={"chunk_texts": 8, "batch_tokens": 256, "max_context_tokens": 64, "precision": "fp32"},
        triage={"use_fuzzy": False, "use_dense": False},
    )
    succeeded(invoke("triage", "--config", config))
    return {"config": config, "run_dir": folder / "run", "folder": folder}


def copy_triage(big: dict, target: Path) -> Path:
    shutil.copytree(big["run_dir"] / "triage", target / "triage")
    return target


def test_killed_encode_resumes_from_its_last_chunk(big_triage: dict, tmp_path: Path) -> None:
    reference = copy_triage(big_triage, tmp_path / "reference")
    succeeded(invoke("encode", "--config", big_triage["config"], "--run-dir", reference))

    run_dir = copy_triage(big_triage, tmp_path / "killed")
    command = [
        sys.executable,
        str(ROOT / "cli.py"),
        "encode",
        "--config",
        str(big_triage["config"]),
        "--run-dir",
        str(run_dir),
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    chunk_files: list[Path] = []
    while process.poll() is None and time.monotonic() < deadline:
        chunk_files = sorted(run_dir.glob("encode/work-*/chunk-*.npz"))
        if len(chunk_files) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, "encode finished before it could be killed; make the run longer"
    assert not (run_dir / "encode" / "vectors.h5").exists() and not (run_dir / "encode" / "manifest.json").exists()
    finished = len(sorted(run_dir.glob("encode/work-*/chunk-*.npz")))
    assert finished >= 2

    rerun = subprocess.run(command, cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    manifest = read_manifest(run_dir / "encode")
    total = manifest["counts"]["chunks"]
    assert finished < total
    # Chunks already on disk are not recomputed ...
    assert manifest["counts"]["chunks_resumed"] == finished
    assert f"resuming encode: {finished} of {total} chunks" in rerun.stderr
    # ... the result is the uninterrupted run's (same chunks, same batches: bit for bit on
    # CPU), and the work files are gone.
    assert_same_vectors(run_dir / "encode" / "vectors.h5", reference / "encode" / "vectors.h5", exact=True)
    assert not list((run_dir / "encode").glob("work-*")) and not list(run_dir.rglob("*.tmp"))
    up_to_date = succeeded(invoke("encode", "--config", big_triage["config"], "--run-dir", run_dir))
    assert up_to_date.output.startswith("encode: up to date")


def test_shards_merge_into_the_single_run_vectors(big_triage: dict, tmp_path: Path) -> None:
    config = big_triage["config"]
    single = copy_triage(big_triage, tmp_path / "single")
    succeeded(invoke("encode", "--config", config, "--run-dir", single, "--set", "encoder.chunk_texts=4096"))
    sharded = copy_triage(big_triage, tmp_path / "sharded")
    for shard in ("1/3", "0/3", "2/3"):
        result = succeeded(invoke("encode", "--config", config, "--run-dir", sharded, "--shard", shard))
        assert "encode: done in" in result.output
    shard_files = sorted(p.name for p in (sharded / "encode" / "shards").iterdir())
    assert shard_files == [f"vectors-{i}-of-3.{ext}" for i in range(3) for ext in ("h5", "json")]
    assert not (sharded / "encode" / "manifest.json").exists()
    # A finished shard is up to date.
    again = succeeded(invoke("encode", "--config", config, "--run-dir", sharded, "--shard", "1/3"))
    assert again.output.startswith("encode: up to date")

    merged = succeeded(invoke("encode", "--config", config, "--run-dir", sharded, "--merge"))
    assert "encode: done in" in merged.output
    assert_same_vectors(sharded / "encode" / "vectors.h5", single / "encode" / "vectors.h5")
    manifest = read_manifest(sharded / "encode")
    assert manifest["shards"] == 3 and manifest["counts"]["mentions"] == MENTIONS
    with h5py.File(sharded / "encode" / "vectors.h5", "r") as handle:
        assert "shard" not in handle.attrs and handle.attrs["encoder_identity"]
    # Train sees a normal finished encode stage: a plain encode is up to date.
    plain = succeeded(invoke("encode", "--config", config, "--run-dir", sharded))
    assert plain.output.startswith("encode: up to date")


def test_merge_names_a_missing_shard(make_run_config, tmp_path: Path) -> None:
    config = make_run_config()
    run_dir = tmp_path / "run"
    succeeded(invoke("triage", "--config", config))
    none_yet = invoke("encode", "--config", config, "--merge")
    assert none_yet.exit_code == 2 and "Error: [E403]" in none_yet.output
    succeeded(invoke("encode", "--config", config, "--shard", "0/2"))
    result = invoke("encode", "--config", config, "--merge")
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    missing = run_dir / "encode" / "shards" / "vectors-1-of-2.h5"
    assert error_lines == [
        f"Error: [E403] {missing}: missing; shard 1/2 is missing or was made with other inputs "
        f"or settings; run `xel-cli encode --shard 1/2` with this run's config, then run "
        f"`xel-cli encode --merge` again"
    ]
    assert "Traceback" not in result.output
    # A shard of other settings does not count as this run's shard 1/2.
    succeeded(invoke("encode", "--config", config, "--shard", "1/2", "--set", "encoder.name_layer=2"))
    assert invoke("encode", "--config", config, "--merge").exit_code == 2
    succeeded(invoke("encode", "--config", config, "--shard", "1/2"))
    succeeded(invoke("encode", "--config", config, "--merge"))
    ids = read_all(run_dir / "encode" / "vectors.h5")["mentions"][0]
    assert ids == sorted(r["id"] for r in tiny_mention_records())


def test_slurm_array_variables_pick_the_shard(make_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_run_config()
    succeeded(invoke("triage", "--config", config))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    succeeded(invoke("encode", "--config", config))
    assert (tmp_path / "run" / "encode" / "shards" / "vectors-1-of-2.h5").is_file()
    assert not (tmp_path / "run" / "encode" / "vectors.h5").exists()
    # --merge ignores the array variables.
    assert "Error: [E403]" in invoke("encode", "--config", config, "--merge").output


@pytest.mark.parametrize("text", ["2/2", "1", "a/3", "-1/2", "0/0"])
def test_bad_shard_is_e203(text: str) -> None:
    with pytest.raises(ConfigError, match="E203"):
        parse_shard(text)


def test_shard_parsing_and_slices() -> None:
    import polars as pl

    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
    assert shard_from_environment({}) is None
    assert shard_from_environment({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    frame = pl.DataFrame({"id": [f"x{i}" for i in range(10)]})
    parts = [shard_slice(frame, (i, 3))["id"].to_list() for i in range(3)]
    assert sum(parts, []) == frame["id"].to_list()
    assert [len(p) for p in parts] == [3, 3, 4]
    assert shard_slice(frame.head(1), (0, 2)).height == 0


def _read_only_mounts_work() -> bool:
    probe = shutil.which("unshare") and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount --bind /tmp /tmp"], capture_output=True
    )
    return bool(probe) and probe.returncode == 0


@pytest.mark.skipif(
    not _read_only_mounts_work(),
    reason="needs `unshare -rm` (user and mount namespaces) to mount the cache read-only; chmod does not stop root",
)
def test_encode_with_a_read_only_cache_finishes_and_says_once_its_vectors_are_not_cached(
    tiny_encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """encode adds its entity vectors to the shared store for later links; a read-only store is left as it
    is with one `[W404]`, and the run's vectors.h5 is whole (before, the store's refused write was E406)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XEL_CACHE", str(cache))
    config = write_run_config(tmp_path, tiny_encoder_dir)
    succeeded(invoke("triage", "--config", config))  # fills the cache's KB index
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    command = (
        f"mount --bind {cache} {cache} && mount -o remount,bind,ro {cache} && "
        f"{sys.executable} {ROOT / 'cli.py'} encode --config {config}"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ONE_THREAD, "PYTHONPATH": str(ROOT), "XEL_CACHE": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[W" in line]
    assert len(warnings) == 1 and f"[W404] {cache / 'entity-vectors'}/" in warnings[0], result.stderr
    assert "this run's entity vectors are not added to it" in warnings[0]
    assert read_manifest(tmp_path / "run" / "encode")["counts"]["entities"] > 0
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before
