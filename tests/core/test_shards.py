"""`pipeline.core.shards.finished_shards`: the one search for a merge's shards that encode and link share."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.core.errors import CacheError
from pipeline.core.shards import ShardErrors, finished_shards

ERRORS = ShardErrors(
    none_finished=lambda: CacheError("E411", path="shards", detail="none"),
    cut_differently=lambda counts: CacheError("E411", path="shards", detail=f"cut {counts}"),
    missing=lambda index, count: CacheError("E411", path=f"part-{index}-of-{count}", detail="missing"),
    stage="encode",
    options="this run's config",
)


def write_shard(folder: Path, index: int, count: int, key: str = "k1") -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"part-{index}-of-{count}.json").write_text(json.dumps({"key": key, "index": index}), encoding="utf-8")


def test_all_shards_of_the_key_in_shard_order(tmp_path: Path) -> None:
    for index in (2, 0, 1):
        write_shard(tmp_path, index, 3)
    write_shard(tmp_path, 0, 2, key="another key")  # another job's shards are not this one's
    (tmp_path / "part-x-of-3.json").write_text("{}", encoding="utf-8")  # not a shard name: skipped
    assert [m["index"] for m in finished_shards(tmp_path, "part", "k1", ERRORS)] == [0, 1, 2]


@pytest.mark.parametrize(
    "shards, message",
    [
        ([], "shards: none"),
        ([(0, 2, "k2")], "shards: none"),
        ([(0, 2, "k1"), (1, 2, "k1"), (0, 3, "k1")], "shards: cut [2, 3]"),
        ([(0, 3, "k1"), (2, 3, "k1")], "part-1-of-3: missing"),
    ],
)
def test_each_way_of_being_unfinished_is_the_callers_error(tmp_path: Path, shards: list, message: str) -> None:
    tmp_path.mkdir(exist_ok=True)
    for index, count, key in shards:
        write_shard(tmp_path, index, count, key)
    with pytest.raises(CacheError, match="^" + re.escape(f"[E411] {message}")):
        finished_shards(tmp_path, "part", "k1", ERRORS)


def test_a_shard_counts_only_once_finished_says_so(tmp_path: Path) -> None:
    """As encode's: a manifest without its vectors file beside it is no finished shard."""
    write_shard(tmp_path, 0, 2)
    write_shard(tmp_path, 1, 2)
    (tmp_path / "part-0-of-2.h5").write_bytes(b"")
    with pytest.raises(CacheError, match="part-1-of-2: missing"):
        finished_shards(tmp_path, "part", "k1", ERRORS, finished=lambda path: path.with_suffix(".h5").is_file())


def test_a_damaged_shard_record_says_to_delete_it_and_rerun_that_shard(tmp_path: Path) -> None:
    """Not E402's "re-run the stage with --force", which deletes every other shard's work (report F8)."""
    write_shard(tmp_path, 0, 2)
    (tmp_path / "part-1-of-2.json").write_text("[]", encoding="utf-8")
    with pytest.raises(CacheError) as raised:
        finished_shards(tmp_path, "part", "k1", ERRORS)
    assert raised.value.format_message() == (
        f"[E413] {tmp_path / 'part-1-of-2.json'}: manifest is damaged (not an object with a 'key' string and an "
        "'outputs' list); delete this record of shard 1/2 and run `xel-cli encode --shard 1/2` again with this "
        "run's config (not with --force, which deletes every shard's finished work), then `xel-cli encode --merge`"
    )
