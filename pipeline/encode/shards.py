"""Encode shards (`--shard i/n`, Slurm arrays) and the files a `--merge` joins.

Shard i of n encodes the i-th contiguous slice of the id-sorted mentions and entities into
shards/vectors-<i>-of-<n>.h5 with a manifest of its own.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.errors import CacheError, ConfigError
from pipeline.core.shards import ShardErrors
from pipeline.core.shards import finished_shards as finished_shards_of
from pipeline.formats.vectors import read_vectors

SHARDS = "shards"


def parse_shard(text: str, where: str = "--shard") -> tuple[int, int]:
    """`i/n` -> (i, n) with 0 <= i < n; i counts from 0, like Slurm array task ids."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not int(match[1]) < int(match[2]):
        raise ConfigError(
            "E203",
            where=where,
            field="shard",
            value=text,
            reason="write it as i/n with 0 <= i < n (i counts from 0, like Slurm array ids)",
        )
    return int(match[1]), int(match[2])


def shard_from_environment(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """The shard of a Slurm array task: i = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, n = SLURM_ARRAY_TASK_COUNT.

    None outside an array job. Subtracting the first id makes `--array=1-4` work too.
    """
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    where = "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT"
    try:
        index = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    except ValueError:
        raise ConfigError(
            "E203",
            where=where,
            field="SLURM_ARRAY_TASK_ID",
            value=environ["SLURM_ARRAY_TASK_ID"],
            reason="must be an integer",
        ) from None
    return parse_shard(f"{index}/{environ['SLURM_ARRAY_TASK_COUNT']}", where=where)


def shard_slice(frame: pl.DataFrame, shard: tuple[int, int]) -> pl.DataFrame:
    """Rows [i*N//n, (i+1)*N//n) of `frame`: the n slices are disjoint and cover every row."""
    index, count = shard
    first, end = index * frame.height // count, (index + 1) * frame.height // count
    return frame.slice(first, end - first)


def shard_paths(out_dir: Path, shard: tuple[int, int]) -> tuple[Path, Path]:
    """(vectors file, manifest) of one shard."""
    base = out_dir / SHARDS / f"vectors-{shard[0]}-of-{shard[1]}"
    return base.with_suffix(".h5"), base.with_suffix(".json")


def finished_shards(out_dir: Path, key: str) -> tuple[list[Path], list[dict]]:
    """Vectors files and manifests of all n shards of this key, in shard order.

    Raises E403 naming the first missing shard, E404 if this key's shards were cut in
    more than one way (`core.shards.finished_shards`, with encode's messages).
    """
    errors = ShardErrors(
        none_finished=lambda: CacheError(
            "E403",
            path=out_dir / SHARDS / "vectors-<i>-of-<n>.h5",
            detail="no shard of this encode (same inputs and settings) has finished; "
            "run `xel-cli encode --shard i/n` for every i = 0 .. n-1",
        ),
        cut_differently=lambda counts: CacheError(
            "E404",
            path=out_dir / SHARDS,
            detail=f"this encode's shards were cut in {counts} parts; delete the set you do not want",
        ),
        missing=lambda index, count: CacheError(
            "E403",
            path=shard_paths(out_dir, (index, count))[0],
            detail=f"shard {index}/{count} is missing or was made with other inputs or settings; "
            f"run `xel-cli encode --shard {index}/{count}` with this run's config",
        ),
        stage="encode",
        options="this run's config",
    )
    # A shard counts only with its vectors file beside its manifest.
    manifests = finished_shards_of(
        out_dir / SHARDS, "vectors", key, errors, finished=lambda manifest: manifest.with_suffix(".h5").is_file()
    )
    count = len(manifests)
    return [shard_paths(out_dir, (index, count))[0] for index in range(count)], manifests


def merge_group(paths: list[Path], group: str, expected_ids: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One group of all shards, in the order of `expected_ids`; every id exactly once or E404."""
    parts = [read_vectors(path, group) for path in paths]
    found = pl.DataFrame({"id": [i for ids, _, _ in parts for i in ids]}, schema={"id": pl.String})
    found = found.with_row_index("row")
    repeated = found.filter(pl.col("id").is_duplicated())
    if repeated.height:
        raise CacheError(
            "E404", path=paths[0].parent, detail=f"/{group} id {repeated['id'][0]!r} is in more than one shard"
        )
    expected = pl.DataFrame({"id": expected_ids}, schema={"id": pl.String}).with_row_index("position")
    joined = expected.join(found, on="id", how="left").sort("position")
    missing = joined.filter(pl.col("row").is_null())
    extra = found.join(expected, on="id", how="anti")
    if missing.height or extra.height:
        first = missing["id"][0] if missing.height else extra["id"][0]
        raise CacheError(
            "E404",
            path=paths[0].parent,
            detail=f"the shards' /{group} ids differ from the triage output ({missing.height} missing, "
            f"{extra.height} not expected, first {first!r})",
        )
    rows = joined["row"].to_numpy()
    names = np.concatenate([p[1] for p in parts])[rows]
    contexts = np.concatenate([p[2] for p in parts])[rows]
    return expected_ids, names, contexts


def remove_stale_work(out_dir: Path, key: str) -> None:
    """Delete chunk folders of other keys: a finished stage will never resume them."""
    for folder in out_dir.glob("work-*"):
        if not folder.name.startswith(f"work-{key}"):
            shutil.rmtree(folder, ignore_errors=True)
