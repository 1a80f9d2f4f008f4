"""The `--out` folder of `xel-cli link`: checked, created, locked, and removed again after a
failure that linked nothing into a folder link created itself.

A failed link (a bad model folder, a missing KB, a bad mention in the first chunk) would
otherwise leave behind an empty folder the user never had. What is removed, and only then:
a folder (and the parents) this call created, once nothing in it counts as linked work,
i.e. no finished chunk, shard record, output or encoder sub-chunk (`holds_linked_work`). A
folder the user already had is never removed, nor anything in it, and finished chunks stay
so that the rerun resumes. An unsharded link (or a merge) holds the folder's lock, so no
other process writes there and it empties the folder of its own work files before removing
it; a shard takes no lock (shards of one corpus write there at once), so it only removes a
folder that is empty.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import CacheError, InputError, warn
from pipeline.core.io import write_json_atomic
from pipeline.core.lock import LOCK_NAME, run_lock
from pipeline.core.manifest import MANIFEST, read_manifest_file

logger = logging.getLogger(__name__)

CHUNKS, WORK, SHARDS = "chunks", "work", "shards"
# work/linked_with.json: the model and KB whose links the chunks in --out are (`linked_with`); the
# manifest keeps it too, so a link of another model or KB into the same --out says it replaces them.
LINKED_WITH = "linked_with.json"


def linked_with(model: Path, model_fingerprint: str, kb: Path, kb_fingerprint: str) -> dict[str, str]:
    """What a link's links come from: the model folder and KB, each by path and content fingerprint."""
    return {
        "model": str(Path(model).resolve()),
        "model_fingerprint": model_fingerprint,
        "kb": str(Path(kb).resolve()),
        "kb_fingerprint": kb_fingerprint,
    }


def record_linked_with(out_dir: Path, identity: dict[str, str]) -> None:
    """Write work/linked_with.json (beside work/key.txt) for the chunks this link writes."""
    write_json_atomic(out_dir / WORK / LINKED_WITH, identity)


def recorded_linked_with(out_dir: Path) -> dict[str, str] | None:
    """work/linked_with.json, or None where there is none (or it cannot be read: it only informs)."""
    try:
        return json.loads((out_dir / WORK / LINKED_WITH).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _previous_links(out_dir: Path) -> dict[str, str] | None:
    """The model and KB of the links already in `out_dir`: a finished link's (its manifest; an older
    xel's names only the model path) or, without one, the chunks of an unfinished one; None: none there."""
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = read_manifest_file(manifest_path)
        except CacheError:
            return None
        return manifest.get("linked_with") or {"model": str(manifest.get("inputs", {}).get("model", ""))}
    has_chunks = any(True for _ in (out_dir / CHUNKS).glob("chunk-*.parquet"))
    return recorded_linked_with(out_dir) if has_chunks else None


def warn_replaced_links(out_dir: Path, identity: dict[str, str]) -> str | None:
    """Warn (W704) when `out_dir` holds links of another model or KB than `identity` (`linked_with`),
    which this link replaces; returns the warning, or None. Called once the link is sure to run."""
    previous = _previous_links(out_dir)
    if not previous:
        return None
    changes = []
    for name, label in (("model", "model"), ("kb", "KB")):
        old_path, old_print = previous.get(name), previous.get(f"{name}_fingerprint")
        new_path, new_print = identity[name], identity[f"{name}_fingerprint"]
        if old_print is not None and old_print != new_print:
            changes.append(
                f"another {label} ({old_path}, now {new_path})"
                if old_path != new_path
                else f"another {label} ({old_path}, whose content has changed since)"
            )
        elif old_print is None and old_path and Path(old_path).resolve() != Path(new_path):
            changes.append(f"another {label} ({old_path}, now {new_path})")
    if not changes:
        return None
    return warn(logger, "W704", path=out_dir, what=" and ".join(changes))


def check_out_dir(out_dir: Path) -> None:
    """Refuse (E714) an --out folder holding anything but what link writes, e.g. a run's evaluate/:
    link would replace its system.tab and manifest and leave the rest mixed in."""
    from pipeline.link.outputs import OUTPUT_NAMES

    if not out_dir.is_dir():
        return
    ours = {CHUNKS, WORK, SHARDS, MANIFEST, *OUTPUT_NAMES, LOCK_NAME}
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in ours and not p.name.endswith(".tmp"))
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        try:
            foreign += [] if read_manifest_file(manifest).get("stage") == "link" else [MANIFEST]
        except CacheError:
            foreign.append(MANIFEST)
    if foreign:
        raise InputError("E714", path=out_dir, example=foreign[0])


def holds_linked_work(out_dir: Path) -> bool:
    """Whether `out_dir` holds anything a rerun would reuse or a user would want: a finished chunk,
    a finished shard's record, an output (links, manifest) or the encoder's finished sub-chunks of
    the chunk in progress. Work files (the key, the docs as Parquet) and temporary files do not count."""
    from pipeline.link.outputs import LINKS_JSONL, LINKS_PARQUET
    from pipeline.scoring.decisions import SYSTEM_TAB

    if any((out_dir / name).exists() for name in (MANIFEST, LINKS_PARQUET, LINKS_JSONL, SYSTEM_TAB)):
        return True
    return any(
        True
        for pattern in (f"{CHUNKS}/chunk-*.parquet", f"{SHARDS}/shard-*.json", f"{WORK}/encode-*/**/chunk-*.npz")
        for _ in out_dir.glob(pattern)
    )


@contextlib.contextmanager
def out_folder(out_dir: Path, locked: bool, command: str = "link") -> Iterator[Path]:
    """Check `out_dir` (E714), create it and hold its lock when `locked`, for the block.

    On any failure in the block (or in taking the lock) the folder is removed again when
    this call created it and it holds no linked work; see the module doc. The error is
    re-raised unchanged.
    """
    check_out_dir(out_dir)
    created = []  # out_dir and the parents it needs, deepest first
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            break
        created.append(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(out_dir, command) if locked else contextlib.nullcontext():
            try:
                yield out_dir
            except BaseException:
                if created and not holds_linked_work(out_dir):
                    _remove_work_files(out_dir)  # under the lock: only this process writes here
                raise
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):  # not empty: a shard's or another process's files are there
                os.rmdir(folder)
        raise


def _remove_work_files(out_dir: Path) -> None:
    """Everything in `out_dir` but the lock (the lock's own exit removes it)."""
    for path in out_dir.iterdir():
        if path.name == LOCK_NAME:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
