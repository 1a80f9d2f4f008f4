"""The finished shards of a sharded job (`encode --shard`, `link --shard`), found for its `--merge`.

Each shard i of n leaves a manifest `<prefix>-<i>-of-<n>.json` holding the job's key. A
merge needs all n shards of its key, cut one way; what to say when they are not there is
the caller's (encode names its vectors files, link its shard records), so each passes
its `ShardErrors`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import CacheError, PipelineError
from pipeline.core.manifest import read_manifest_file


@dataclass(frozen=True)
class ShardErrors:
    """The caller's coded error for each way a merge can find its shards unfinished."""

    none_finished: Callable[[], PipelineError]  # no shard of this key at all
    cut_differently: Callable[[list[int]], PipelineError]  # this key's shards, cut into each of these n
    missing: Callable[[int, int], PipelineError]  # shard (i, n) of an otherwise finished set
    stage: str  # the command whose shards these are ("link", "encode")
    options: str  # what the shard must be rerun with ("the same model, inputs and options")


def finished_shards(
    folder: Path, prefix: str, key: str, errors: ShardErrors, finished: Callable[[Path], bool] = Path.is_file
) -> list[dict]:
    """The manifests of all n shards of `key` in `folder`, in shard order (0 .. n-1).

    A shard counts when its manifest `<prefix>-<i>-of-<n>.json` holds `key` and
    `finished(manifest path)` (e.g. its vectors file is there too). Raises the caller's
    error (`errors`): none finished, cut into more than one n, or one shard missing (the
    first). A manifest that cannot be read is E413, saying to delete that one and rerun its shard.
    """
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)-of-(\d+)\.json")
    manifests: dict[tuple[int, int], dict] = {}
    for path in sorted(folder.glob(f"{prefix}-*-of-*.json")):
        match = pattern.fullmatch(path.name)
        if match is None:
            continue
        try:
            manifest = read_manifest_file(path)
        except CacheError as exc:  # E402's --force would delete every other shard's work too
            shard, detail = f"{match[1]}/{match[2]}", exc.fields["detail"]
            raise CacheError(
                "E413", path=path, shard=shard, detail=detail, stage=errors.stage, options=errors.options
            ) from None
        if manifest.get("key") == key and finished(path):
            manifests[(int(match[1]), int(match[2]))] = manifest
    counts = sorted({count for _, count in manifests})
    if not counts:
        raise errors.none_finished()
    if len(counts) > 1:
        raise errors.cut_differently(counts)
    count = counts[0]
    for index in range(count):
        if (index, count) not in manifests:
            raise errors.missing(index, count)
    return [manifests[(index, count)] for index in range(count)]
