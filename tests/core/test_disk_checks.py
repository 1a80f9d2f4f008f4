"""Files on disk are checked before they are used (issue 21, items 1, 2, 6, 7).

Caches (entity-vector parts, the KB index's tables, tantivy and FAISS indexes) and a link's
saved pieces (chunks, shard records) are damaged by hand here, the way a full disk, a bad
copy or a hand edit leaves them: a damaged cache entry is a miss, rebuilt with one `[W402]`
naming the file; a damaged chunk is redone, or refused at `--merge`, naming what to delete.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import Result

from conftest import invoke, run_demo_linker, succeeded, write_jsonl
from pipeline.core import checked_files

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "pipeline" / "demo_data"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    folder = tmp_path_factory.mktemp("demo-run")
    run_demo_linker(folder, tiny_encoder_dir)
    records = [json.loads(line) for line in (DEMO / "mentions.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [
        {k: v for k, v in r.items() if k not in ("gold_kb_id", "split")} for r in records if r.get("split") == "test"
    ]
    return {"model": folder / "run" / "model", "test": write_jsonl(folder / "test-no-gold.jsonl", test)}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def link(demo_run: dict, out: Path, *extra: object) -> Result:
    return invoke(
        "link",
        "--model",
        demo_run["model"],
        "--mentions",
        demo_run["test"],
        "--out",
        out,
        "--chunk-mentions",
        20,
        *extra,
    )


def links(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "links.parquet").select("mention_id", "kb_id", "is_nil").sort("mention_id")


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def fill_with_nan(path: Path) -> None:
    """Keep the .npy header (so it loads), every value NaN."""
    array = np.load(path, mmap_mode="r+")
    array[:] = np.nan
    array.flush()


def empty(path: Path) -> None:
    path.write_bytes(b"")


def one_file(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    assert found, f"no {pattern} under {folder}"
    return found[0]


# --- item 1: cache entries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, damage",
    [
        ("entity-vectors/*/part-*.name.npy", truncate),
        ("entity-vectors/*/part-*.name.npy", fill_with_nan),
        ("entity-vectors/*/part-*.keys.npy", truncate),
        ("kb-index/*/entities-*/entities.parquet", truncate),
        ("kb-index/*/names-*/surfaces.parquet", truncate),
        ("kb-index/*/names-*/tantivy/meta.json", empty),
        ("kb-index/*/dense-*/names.faiss", empty),
    ],
    ids=["part-truncated", "part-nan", "keys-truncated", "entities", "surfaces", "tantivy", "faiss"],
)
def test_a_damaged_cache_entry_is_a_miss_rebuilt_with_one_warning(
    demo_run: dict, tmp_path: Path, cache: Path, pattern: str, damage
) -> None:
    succeeded(link(demo_run, tmp_path / "first"))
    damaged = one_file(cache, pattern)
    damage(damaged)
    again = succeeded(link(demo_run, tmp_path / "again"))
    assert again.output.count("[W402]") == 1 and str(damaged) in again.output, again.output
    assert links(tmp_path / "again").equals(links(tmp_path / "first"))
    # Rebuilt: the next link finds the entry whole and says nothing.
    third = succeeded(link(demo_run, tmp_path / "third"))
    assert "[W402]" not in third.output


def test_a_record_finds_truncation_changed_bytes_and_non_finite_values(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((3, 2), dtype=np.float32))
    (tmp_path / "b.txt").write_text("abc", encoding="utf-8")
    record = tmp_path / "record.json"
    checked_files.seal(record, [tmp_path / "a.npy", tmp_path / "b.txt"], {"rows": 3})
    assert checked_files.damage(record) is None and checked_files.read_content(record) == {"rows": 3}
    (tmp_path / "b.txt").write_text("abd", encoding="utf-8")
    assert "b.txt: its content changed" in checked_files.damage(record)
    (tmp_path / "b.txt").write_text("abc", encoding="utf-8")
    fill_with_nan(tmp_path / "a.npy")
    assert "a.npy: " in checked_files.damage(record)
    truncate(tmp_path / "a.npy")
    assert "a.npy: 76 bytes where 152 were written" in checked_files.damage(record)
    assert "missing" in checked_files.damage(tmp_path / "no-record.json")


# --- item 1: a link's saved chunks ------------------------------------------------------------------


def test_a_damaged_saved_chunk_is_redone_on_resume(demo_run: dict, tmp_path: Path, cache: Path) -> None:
    succeeded(link(demo_run, tmp_path / "whole"))
    succeeded(link(demo_run, tmp_path / "out", "--shard", "0/1"))  # every chunk saved, nothing merged
    damaged = tmp_path / "out" / "chunks" / "chunk-000001.parquet"
    truncate(damaged)
    resumed = succeeded(link(demo_run, tmp_path / "out"))
    assert resumed.output.count("[W403]") == 1 and str(damaged) in resumed.output, resumed.output
    assert "4 chunk(s), 3 resumed" in resumed.output
    assert links(tmp_path / "out").equals(links(tmp_path / "whole"))


@pytest.mark.parametrize("swap", [False, True], ids=["record-copied", "pairs-swapped"])
def test_a_record_copied_from_another_chunk_redoes_only_its_own_chunk(
    demo_run: dict, tmp_path: Path, cache: Path, swap: bool
) -> None:
    """A record copied beside another chunk (or two chunks' pairs swapped) lists the other chunk's file:
    the resume redoes the chunk it was copied to and never deletes the other, whole chunk."""
    succeeded(link(demo_run, tmp_path / "whole"))
    succeeded(link(demo_run, tmp_path / "out", "--shard", "0/1"))
    chunks = tmp_path / "out" / "chunks"
    if swap:
        for suffix in (".parquet", ".json"):
            one, three = chunks / f"chunk-000001{suffix}", chunks / f"chunk-000003{suffix}"
            one.rename(chunks / "swap"), three.rename(one), (chunks / "swap").rename(three)
    else:
        shutil.copy(chunks / "chunk-000001.json", chunks / "chunk-000003.json")
    resumed = succeeded(link(demo_run, tmp_path / "out"))
    assert "[E711]" not in resumed.output and "[E717]" not in resumed.output, resumed.output
    assert resumed.output.count("[W403]") == (2 if swap else 1), resumed.output
    assert f"4 chunk(s), {2 if swap else 3} resumed" in resumed.output, resumed.output
    assert links(tmp_path / "out").equals(links(tmp_path / "whole"))


@pytest.mark.parametrize("value", [7, "ten", None], ids=["other-count", "a-string", "null"])
def test_a_chunk_record_whose_counts_were_edited_is_damaged(demo_run: dict, tmp_path: Path, cache: Path, value) -> None:
    """Break-test A/B: a record's counts were trusted (a merge reported 37 mentions for 40; a string crashed it
    after writing the links, leaving no manifest): they are checked like the files it lists."""
    for index in range(2):
        succeeded(link(demo_run, tmp_path / "out", "--shard", f"{index}/2"))
    record = tmp_path / "out" / "chunks" / "chunk-000001.json"
    payload = json.loads(record.read_text(encoding="utf-8"))
    payload["content"]["mentions"] = value
    record.write_text(json.dumps(payload), encoding="utf-8")
    merged = link(demo_run, tmp_path / "out", "--merge")
    assert merged.exit_code == 2 and "Traceback" not in merged.output, merged.output
    assert f"Error: [E711] {tmp_path / 'out' / 'chunks' / 'chunk-000001.parquet'}: damaged" in merged.output
    assert (
        "its counts) changed since it was written" in merged.output
        and not (tmp_path / "out" / "links.parquet").exists()
    )
    resumed = succeeded(link(demo_run, tmp_path / "out"))  # a plain link redoes it
    assert resumed.output.count("[W403]") == 1 and "3 resumed" in resumed.output, resumed.output
    assert (
        links(tmp_path / "out").height
        == json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["mentions"]
    )


def test_a_chunk_sealed_over_another_is_refused_naming_both_and_mended_as_told(
    demo_run: dict, tmp_path: Path, cache: Path
) -> None:
    """Break-test C: chunk 0 copied over chunk 1 with a record made to match: E717 said both "delete the chunks
    folder" and "it keeps the rest", naming no chunk. It names the two chunks; deleting them mends it."""
    succeeded(link(demo_run, tmp_path / "whole"))
    succeeded(link(demo_run, tmp_path / "out", "--shard", "0/1"))
    chunks = tmp_path / "out" / "chunks"
    shutil.copy(chunks / "chunk-000000.parquet", chunks / "chunk-000001.parquet")
    payload = json.loads((chunks / "chunk-000000.json").read_text(encoding="utf-8"))
    payload["files"] = {"chunk-000001.parquet": payload["files"]["chunk-000000.parquet"]}
    (chunks / "chunk-000001.json").write_text(json.dumps(payload), encoding="utf-8")
    refused = link(demo_run, tmp_path / "out")
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    line = refused.output.strip().splitlines()[-1]
    assert (
        line.startswith("Error: [E717]")
        and "delete chunk-000000.parquet (with its .json) and chunk-000001.parquet" in line
    )
    for name in ("chunk-000000", "chunk-000001"):
        (chunks / f"{name}.parquet").unlink(), (chunks / f"{name}.json").unlink()
    mended = succeeded(link(demo_run, tmp_path / "out"))
    assert "4 chunk(s), 2 resumed" in mended.output and links(tmp_path / "out").equals(links(tmp_path / "whole"))


def test_a_damaged_chunk_at_merge_is_refused_naming_what_to_delete(demo_run: dict, tmp_path: Path, cache: Path) -> None:
    for index in range(2):
        succeeded(link(demo_run, tmp_path / "out", "--shard", f"{index}/2"))
    damaged = tmp_path / "out" / "chunks" / "chunk-000001.parquet"
    truncate(damaged)
    merged = link(demo_run, tmp_path / "out", "--merge")
    assert merged.exit_code == 2 and "Traceback" not in merged.output, merged.output
    line = merged.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: [E711] {damaged}: ") and "shard-1-of-2.json" in line and "--shard 1/2" in line, line
    # Doing what it says mends it.
    damaged.unlink()
    (tmp_path / "out" / "shards" / "shard-1-of-2.json").unlink()
    succeeded(link(demo_run, tmp_path / "out", "--shard", "1/2"))
    succeeded(link(demo_run, tmp_path / "out", "--merge"))


def test_a_damaged_shard_record_at_merge_says_to_rerun_that_shard_not_force(
    demo_run: dict, tmp_path: Path, cache: Path
) -> None:
    """Fresh-user report F8: the record said "re-run the stage with --force", which for a link deletes every
    other shard's chunks. It names the record and the shard to rerun; doing so resumes that shard."""
    out = tmp_path / "out"
    for index in range(2):
        succeeded(link(demo_run, out, "--shard", f"{index}/2"))
    record = out / "shards" / "shard-0-of-2.json"
    empty(record)
    merged = link(demo_run, out, "--merge")
    assert merged.exit_code == 2 and "Traceback" not in merged.output, merged.output
    line = merged.output.strip().splitlines()[-1]
    assert (
        line.startswith(f"Error: [E413] {record}: manifest is damaged (")
        and (
            "delete this record of shard 0/2 and run `xel-cli link --shard 0/2` again with the same model, inputs and "
            "options (not with --force, which deletes every shard's finished work), then `xel-cli link --merge`"
        )
        in line
    ), line
    record.unlink()
    assert "resumed" in succeeded(link(demo_run, out, "--shard", "0/2")).output
    succeeded(link(demo_run, out, "--merge"))


@pytest.mark.parametrize(
    ("shard", "value", "said"),
    [
        (0, 3, "its chunks_total is 3, but chunk-000003.parquet is saved too"),
        (1, 9, "its chunks_total 9 differs from another shard's 4"),
        (0, -1, "its chunks_total is -1, not a count of chunks"),
        (0, "six", "its chunks_total is 'six', not a count of chunks"),
        (0, None, "its chunks_total is None, not a count of chunks"),
        (0, 10**30, "not a count of chunks"),
    ],
    ids=["fewer", "disagree", "negative", "a-string", "removed", "huge"],
)
def test_a_shard_record_whose_chunk_count_is_wrong_is_refused_and_nothing_is_deleted(
    demo_run: dict, tmp_path: Path, cache: Path, shard: int, value, said: str
) -> None:
    """Second break-test F1-F3: a merge trusted shard 0's chunks_total: 5 of 6 merged 250 of 288 mentions,
    exited 0 and deleted the chunks; -1, "six" or no key were tracebacks; 10**30 looped for minutes."""
    out = tmp_path / "out"
    for index in range(2):
        succeeded(link(demo_run, out, "--shard", f"{index}/2"))
    record = out / "shards" / f"shard-{shard}-of-2.json"
    payload = json.loads(record.read_text(encoding="utf-8"))
    if value is None:
        del payload["chunks_total"]
    else:
        payload["chunks_total"] = value
    record.write_text(json.dumps(payload), encoding="utf-8")
    merged = link(demo_run, out, "--merge")
    assert merged.exit_code == 2 and "Traceback" not in merged.output, merged.output
    line = merged.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: [E413] {record}: ") and said in line, line
    assert len(list((out / "chunks").glob("chunk-*.parquet"))) == 4 and not (out / "links.parquet").exists()


# --- item 7: a shard of another count --------------------------------------------------------------


def test_a_shard_of_another_count_beside_finished_shards_is_refused(
    demo_run: dict, tmp_path: Path, cache: Path
) -> None:
    succeeded(link(demo_run, tmp_path / "out", "--shard", "0/2"))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*") if p.is_file())
    other = link(demo_run, tmp_path / "out", "--shard", "1/3")
    assert other.exit_code == 2 and "Traceback" not in other.output, other.output
    line = other.output.strip().splitlines()[-1]
    assert line.startswith("Error: [E715] ") and "shard-0-of-2.json" in line and "1/3" in line, line
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*") if p.is_file()) == before


# --- item 6: a full disk -----------------------------------------------------------------------------


def test_a_full_disk_at_the_lock_is_e406_naming_it_and_leaves_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_run_config
) -> None:
    """The lock file is made (a full disk still has inodes) but its first write fails with ENOSPC and no
    file name, as writes to a descriptor do: every write goes to /dev/full."""
    import pipeline.core.lock

    real_open = os.open

    def open_full(path, flags, *args, **kwargs):
        descriptor = real_open(path, flags, *args, **kwargs)
        if str(path).endswith(".xel.lock"):
            os.close(descriptor)
            return real_open("/dev/full", os.O_WRONLY)
        return descriptor

    monkeypatch.setattr(pipeline.core.lock.os, "open", open_full)
    run_dir = tmp_path / "run"
    result = invoke("triage", "--config", make_run_config(run_dir=run_dir))
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert (
        line.startswith(f"Error: [E406] {run_dir / '.xel.lock'}: cannot write (") and "Traceback" not in result.output
    )
    assert not (run_dir / ".xel.lock").exists()


def test_os_error_of_a_full_disk_is_e406() -> None:
    from pipeline.core.errors import os_error

    error = os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/triage/x.parquet"))
    assert error.code == "E406" and error.format_message().startswith(
        "[E406] /data/run/triage/x.parquet: cannot write ("
    )


# --- item 2: a read-only shared cache -----------------------------------------------------------------


def _read_only_mounts_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount --bind / /mnt 2>/dev/null || mount --bind /tmp /tmp"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _read_only_mounts_work(),
    reason="needs `unshare -rm` (user and mount namespaces) to mount the cache read-only; chmod does not stop root",
)
def test_a_read_only_cache_holding_everything_a_link_needs_is_used_as_is(
    demo_run: dict, tmp_path: Path, cache: Path
) -> None:
    succeeded(link(demo_run, tmp_path / "first"))
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    (tmp_path / "second").mkdir()
    command = (
        f"mount --bind {cache} {cache} && mount -o remount,bind,ro {cache} && "
        f"{sys.executable} {ROOT / 'cli.py'} link --model {demo_run['model']} --mentions {demo_run['test']} "
        f"--out {tmp_path / 'second'} --chunk-mentions 20"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "[W" not in result.stderr, result.stderr
    assert links(tmp_path / "second").equals(links(tmp_path / "first"))
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before


def _link_over_read_only(demo_run: dict, cache: Path, out: Path, temp: Path) -> subprocess.CompletedProcess:
    """`xel-cli link` in a mount namespace where `cache` (XEL_CACHE) is mounted read-only, with `temp` as
    its temporary folder (TMPDIR)."""
    command = (
        f"mount --bind {cache} {cache} && mount -o remount,bind,ro {cache} && "
        f"{sys.executable} {ROOT / 'cli.py'} link --model {demo_run['model']} --mentions {demo_run['test']} "
        f"--out {out} --chunk-mentions 20"
    )
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)},
    )


@pytest.mark.skipif(
    not _read_only_mounts_work(),
    reason="needs `unshare -rm` (user and mount namespaces) to mount the cache read-only; chmod does not stop root",
)
@pytest.mark.parametrize("lacks", ["entity-vectors", "kb-index"])
def test_a_read_only_cache_that_lacks_what_a_link_needs_links_the_same_and_says_once_why_not_cached(
    demo_run: dict, tmp_path: Path, cache: Path, lacks: str
) -> None:
    """A read-only cache that lacks what a link needs (the candidates' vectors, or the KB's indexes) is read as
    it is, and what it lacks is made for this link alone, in a private temporary folder deleted at the end,
    with one `[W404]` saying why it is not cached: the links are those of a writable cache, and nothing is
    written into the cache. Before, the link refused with E406, though the user could not write there."""
    succeeded(link(demo_run, tmp_path / "first"))
    shutil.rmtree(cache / lacks)
    cache.joinpath(lacks).mkdir()
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    temp = tmp_path / "temp"
    temp.mkdir()
    result = _link_over_read_only(demo_run, cache, tmp_path / "out", temp)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[W" in line]
    assert len(warnings) == 1 and "[W404]" in warnings[0], result.stderr
    assert f"{cache / lacks}/" in warnings[0] and "the cache cannot be written (Read-only file system)" in warnings[0]
    assert "Traceback" not in result.stderr
    written = [
        pl.read_parquet(out / "links.parquet").sort("mention_id") for out in (tmp_path / "first", tmp_path / "out")
    ]
    assert written[1].equals(written[0])  # every column, scores included: the same vectors and indexes
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before
    assert list(temp.iterdir()) == []  # the private folder went with the link


def test_a_cache_this_process_cannot_write_keeps_the_vectors_it_lacks_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The entity-vector store of a cache that refuses writes (a read-only mount, a folder of another user:
    here its probe is refused) puts new parts in a private folder, read back as shared ones are, says so
    once (W404), and deletes that folder with the store; the shared folder is not written."""
    import gc
    import logging
    import tempfile

    from pipeline.core import store as store_module

    shared = tmp_path / "cache" / "entity-vectors" / "key"
    shared.mkdir(parents=True)
    mkstemp = tempfile.mkstemp

    def refused_in_shared(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == shared:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(store_module.tempfile, "mkstemp", refused_in_shared)
    store = store_module.EntityVectorStore(shared)
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    with caplog.at_level(logging.WARNING):
        store.add(["a", "b"], vectors[:2], vectors[:2] + 1)
        store.add(["c"], vectors[2:], vectors[2:] + 1)
    assert (
        caplog.text.count("[W404]") == 1 and f"{shared}: the cache cannot be written (Permission denied)" in caplog.text
    )
    assert "(a later link encodes them again); the results are the same; to cache them, set XEL_CACHE" in caplog.text
    found, names, contexts = store.lookup(["c", "x", "a"], 4)
    assert found.tolist() == [True, False, True]
    assert np.array_equal(names[[0, 2]], vectors[[2, 0]]) and np.array_equal(contexts[2], vectors[0] + 1)
    assert list(shared.iterdir()) == [] and store.private is not None and len(list(store.private.iterdir())) == 8
    private = store.private
    del store
    gc.collect()
    assert not private.exists()


def test_a_link_failing_mid_way_keeps_only_its_finished_chunks(
    demo_run: dict, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure in a chunk (here the store refusing its vectors, as a read-only or full disk does) removes that
    chunk's work (the encoder's sub-chunks, anything not sealed); the chunks finished before it stay, with
    the key that says whose they are, and the rerun resumes them."""
    from pipeline.core.errors import CacheError
    from pipeline.core.store import EntityVectorStore

    add, calls = EntityVectorStore.add, []

    def refusing_the_third(self, keys, names, contexts):
        calls.append(len(keys))
        if len(calls) == 3:
            raise CacheError("E406", path=self.folder / "part-x.name.npy", detail="Read-only file system")
        return add(self, keys, names, contexts)

    monkeypatch.setattr(EntityVectorStore, "add", refusing_the_third)
    out = tmp_path / "out"
    failed = link(demo_run, out)
    assert failed.exit_code == 2 and "[E406]" in failed.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != ".xel.lock") == [
        "chunks",
        "chunks/chunk-000000.json",
        "chunks/chunk-000000.parquet",
        "chunks/chunk-000001.json",
        "chunks/chunk-000001.parquet",
        "work",
        "work/key.txt",
        "work/linked_with.json",
    ]
    monkeypatch.setattr(EntityVectorStore, "add", add)
    assert "4 chunk(s), 2 resumed" in succeeded(link(demo_run, out)).output


# --- item 1: encode's saved chunks and shards -----------------------------------------------------------


def test_a_damaged_encode_chunk_is_redone_with_one_warning(
    make_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import h5py

    real_rmtree = shutil.rmtree

    def keep_encode_work(path, *args, **kwargs):  # the chunks a killed encode would leave
        return None if Path(path).name.startswith("work-") else real_rmtree(path, *args, **kwargs)

    config = make_run_config(encoder={"chunk_texts": 4})
    run_dir = tmp_path / "run"
    succeeded(invoke("triage", "--config", config))
    monkeypatch.setattr(shutil, "rmtree", keep_encode_work)
    succeeded(invoke("encode", "--config", config))
    with h5py.File(run_dir / "encode" / "vectors.h5", "r") as handle:
        first = handle["mentions"]["context"][:]
    (run_dir / "encode" / "manifest.json").unlink()  # so encode runs again, resuming its chunks
    damaged = sorted((run_dir / "encode").glob("work-*/chunk-*.npz"))[1]
    with np.load(damaged) as saved:
        arrays = {name: saved[name] for name in saved.files}
    np.savez(damaged, **{**arrays, "context": np.full_like(arrays["context"], np.nan)})
    again = succeeded(invoke("encode", "--config", config))
    assert again.output.count("[W403]") == 1 and str(damaged) in again.output, again.output
    assert "resuming encode: " in again.output
    with h5py.File(run_dir / "encode" / "vectors.h5", "r") as handle:
        np.testing.assert_array_equal(handle["mentions"]["context"][:], first)


def test_a_damaged_encode_shard_is_refused_at_merge_and_redone_by_its_shard(make_run_config, tmp_path: Path) -> None:
    config = make_run_config()
    shards = tmp_path / "run" / "encode" / "shards"
    succeeded(invoke("triage", "--config", config))
    for shard in ("0/2", "1/2"):
        succeeded(invoke("encode", "--config", config, "--shard", shard))
    damaged = shards / "vectors-1-of-2.h5"
    content = bytearray(damaged.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 16] = bytes(b ^ 0xFF for b in content[middle : middle + 16])  # the same size, other bytes
    damaged.write_bytes(bytes(content))
    merged = invoke("encode", "--config", config, "--merge")
    assert merged.exit_code == 2 and "Traceback" not in merged.output, merged.output
    line = merged.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: [E404] {damaged}: damaged (") and "vectors-1-of-2.json" in line, line
    assert "checksum differs" in line
    redone = succeeded(invoke("encode", "--config", config, "--shard", "1/2"))
    assert redone.output.count("[W403]") == 1 and "encode: done in" in redone.output
    succeeded(invoke("encode", "--config", config, "--merge"))


# --- a full disk during a library's write (fresh-user report F12) ----------------------------------------

THRIFT = "parquet: File out of specification: Invalid thrift: transport error"


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """`shutil.disk_usage` says every disk has no byte free, as it does after a write filled it."""
    from pipeline.core import io

    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))


def _polars_write_failing(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    """DataFrame.write_parquet writes some bytes, then fails as polars does on a full disk."""

    def failing(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half")
        raise pl.exceptions.ComputeError(message)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", failing)


@pytest.mark.parametrize("message", [THRIFT, "parquet: underlying IO error: No space left on device (os error 28)"])
def test_a_full_disk_in_a_parquet_write_is_e406_naming_the_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str
) -> None:
    """polars wraps the full disk in its ComputeError (not OSError), quoting the errno or not at all
    ("transport error" when the footer does not fit); both are E406 naming the file, and no file or
    temporary file is left."""
    from pipeline.core.errors import CacheError
    from pipeline.core.io import write_parquet_atomic

    _polars_write_failing(monkeypatch, message)
    _full_disk(monkeypatch)
    with pytest.raises(CacheError) as raised:
        write_parquet_atomic(pl.DataFrame({"x": [1, 2]}), tmp_path / "out" / "chunk.parquet")
    assert raised.value.format_message() == (
        f"[E406] {tmp_path / 'out' / 'chunk.parquet'}: cannot write (No space left on device); "
        "free disk space (or fix the folder's permissions) and re-run"
    )
    assert list((tmp_path / "out").iterdir()) == []


def test_a_library_error_on_a_disk_with_room_is_not_taken_for_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _polars_write_failing(monkeypatch, THRIFT)
    from pipeline.core.io import write_parquet_atomic

    with pytest.raises(pl.exceptions.ComputeError):
        write_parquet_atomic(pl.DataFrame({"x": [1, 2]}), tmp_path / "chunk.parquet")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_a_cache_index_is_built_is_e406_naming_the_entry_and_leaves_no_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.candidates import kb_index
    from pipeline.core.errors import CacheError

    entities = pl.DataFrame({"kb_id": ["Q1", "Q2"], "name": ["Ada Lovelace", "Alan Turing"], "alias_texts": [[], []]})
    _polars_write_failing(monkeypatch, THRIFT)
    _full_disk(monkeypatch)
    root = tmp_path / "kb-index"
    with pytest.raises(CacheError) as raised:
        kb_index.names_index(entities, root, "f" * 32)
    key = kb_index.index_key("f" * 32, "names", {})
    assert raised.value.code == "E406" and raised.value.format_message().startswith(
        f"[E406] {root / key / 'surfaces.parquet'}: cannot write (No space left on device)"
    )
    assert list(root.iterdir()) == []


def _tiny_tmpfs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=40k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _tiny_tmpfs_works(), reason="needs `unshare -rm` (user and mount namespaces) to mount a tmpfs")
@pytest.mark.parametrize("full", ["out", "cache"])
def test_a_link_onto_a_full_disk_is_e406_without_a_traceback(
    demo_run: dict, tmp_path: Path, cache: Path, full: str
) -> None:
    """`--out`, or the cache the KB indexes are built in, on a 40 KB tmpfs: the disk fills in a Parquet
    write (a link chunk, a KB index table) and the link stops with one E406 line, exit 2."""
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out" if full == "out" else tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if full == "cache":
        env["XEL_CACHE"] = str(disk / "cache")
    command = (
        f"mount -t tmpfs -o size=40k tmpfs {disk} && {sys.executable} {ROOT / 'cli.py'} link "
        f"--model {demo_run['model']} --mentions {demo_run['test']} --out {out} --chunk-mentions 8"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: [E406] {disk}/") and "cannot write (No space left on device)" in line, line
    assert ".tmp" not in line
