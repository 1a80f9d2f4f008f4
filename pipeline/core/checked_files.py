"""Files checked before use: what was written is recorded when it is written and verified when read.

Caches live outside any run, so no stage key protects them, and a run's own saved pieces
(link and encode chunks, shard records) can be damaged too: a disk error, a file cut short
by a full disk or a copy, a hand edit. Each such piece gets a *record*, a small JSON file
written last (atomically, after the files it describes are in place) that lists each file
with its size in bytes and the CRC-32 of its content, and for arrays their shape, dtype and
that every value was finite; the record's own `content` (a chunk's counts) has a CRC-32 too. `damage(record)` says what no longer matches, naming the file;
None means every file is as written.

- one file or a few: `seal(record_path, files, content)` writes the record beside them
  (`content`: what the writer wants back, e.g. a chunk's counts; `read_content` returns it);
- a folder built under a temporary name and renamed into place (the KB indexes, the encoder
  build): `seal_folder(folder)` records every file in it inside it (`RECORD_NAME`), so the
  rename moves the record with what it describes.

CRC-32 (zlib, ~3 GB/s) finds accidental damage, not deliberate edits. A record verified once
is not hashed again in the same process while its files' sizes and times stay the same, so a
link that looks at a cache once per chunk hashes it once.

The callers decide what damage means: a cache entry is a miss (rebuilt, with one `[W4xx]`
naming the file), a saved chunk is redone, and a piece nothing can redo is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.core.io import write_json_atomic

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
RECORD_NAME = ".xel-check.json"  # a sealed folder's record, inside it
# Bytes read per step while hashing or scanning for non-finite values (bounds memory on large files).
BLOCK_BYTES = 1 << 24

# Signatures (each file's name, size, time and inode, the record's too) of records verified whole or
# just written: a hit skips hashing. Paths are not part of it, so a sealed folder renamed into place
# (same inodes) is still known.
_VERIFIED: set[tuple] = set()


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes, read in blocks."""
    crc = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
            crc = zlib.crc32(block, crc)
    return crc


def non_finite_count(array: np.ndarray) -> int:
    """How many values of a float array are NaN or infinite (0 for other dtypes); scans row blocks, so
    a memory-mapped array is never loaded whole."""
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return 0
    flat = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
    rows = max(1, BLOCK_BYTES // max(1, flat.shape[1] * flat.itemsize))
    return int(sum(np.count_nonzero(~np.isfinite(flat[first : first + rows])) for first in range(0, len(flat), rows)))


def _describe(path: Path) -> dict:
    entry = {"bytes": path.stat().st_size, "crc32": file_crc32(path)}
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        entry |= {"shape": list(array.shape), "dtype": str(array.dtype), "non_finite": non_finite_count(array)}
    return entry


def describe(files: Iterable[Path], base: Path) -> dict[str, dict]:
    """What `seal` records of `files` (named relative to `base`), for a JSON file of the caller's own
    (a shard's manifest); check it with `listed_damage`."""
    return {str(path.relative_to(base)): _describe(path) for path in sorted(files)}


def listed_damage(base: Path, listed: dict[str, dict]) -> str | None:
    """What is wrong with the files `describe` listed (relative to `base`), or None."""
    for name in sorted(listed):
        problem = _file_damage(base / name, listed[name])
        if problem is not None:
            return problem
    return None


def npz_damage(path: Path) -> str | None:
    """What is wrong with an `.npz` file, or None: every array is read (the zip format checks each
    member's CRC-32) and must hold finite values only."""
    try:
        with np.load(path) as saved:
            for name in saved.files:
                bad = non_finite_count(saved[name])
                if bad:
                    return f"{path}: array {name!r} holds {bad} value(s) that are NaN or infinite"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        return f"{path}: cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


def seal(record_path: Path, files: Iterable[Path], content: dict | None = None) -> None:
    """Write `record_path` (JSON, atomically) listing each of `files` with its size and CRC-32; call it
    after the files are in place, so the record exists only when they are whole.

    `files` are named relative to the record's folder (they must lie under it); `.npy` files also get
    their shape, dtype and count of non-finite values. `content` is kept for `read_content`.
    Raises `CacheError` E406 when the record cannot be written.
    """
    listed = describe(files, record_path.parent)
    content = content or {}
    payload = {"version": RECORD_VERSION, "files": listed, "content": content, "content_crc32": _content_crc32(content)}
    write_json_atomic(record_path, payload)
    with contextlib.suppress(OSError):
        _VERIFIED.add(_signature(record_path, sorted(listed)))


def seal_folder(folder: Path, content: dict | None = None) -> None:
    """Seal every file under `folder` (recursively) in `folder/RECORD_NAME`, but lock files (`*.lock`,
    e.g. tantivy's, which a reader may touch)."""
    seal(
        folder / RECORD_NAME,
        (path for path in folder.rglob("*") if path.is_file() and path.name != RECORD_NAME and path.suffix != ".lock"),
        content,
    )


def _read(record_path: Path) -> dict:
    payload = json.loads(record_path.read_text(encoding="utf-8"))
    if (
        not isinstance(payload, dict)
        or payload.get("version") != RECORD_VERSION
        or not isinstance(payload.get("files"), dict)
    ):
        raise ValueError("not a record of this xel")
    return payload


def _content_crc32(content: object) -> int:
    """CRC-32 of a record's `content` as canonical JSON (sorted keys), so an edited count is found too."""
    return zlib.crc32(json.dumps(content, sort_keys=True, ensure_ascii=True).encode("ascii"))


def _signature(record_path: Path, names: list[str]) -> tuple:
    stats = [record_path.stat(), *((record_path.parent / name).stat() for name in names)]
    return tuple((name, stat.st_size, stat.st_mtime_ns, stat.st_ino) for name, stat in zip(["", *names], stats))


def _file_damage(path: Path, entry: dict) -> str | None:
    if not path.is_file():
        return f"{path}: missing"
    size = path.stat().st_size
    if size != entry.get("bytes"):
        return f"{path}: {size} bytes where {entry.get('bytes')} were written"
    if file_crc32(path) != entry.get("crc32"):
        return f"{path}: its content changed since it was written (checksum differs)"
    if "shape" in entry:
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return f"{path}: cannot be read as an array ({str(exc).splitlines()[0]})"
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry.get("dtype"):
            return f"{path}: shape {list(array.shape)} {array.dtype} where {entry['shape']} {entry.get('dtype')} was written"
        bad = non_finite_count(array)
        if bad:
            return f"{path}: holds {bad} value(s) that are NaN or infinite"
    return None


def damage(record_path: Path, expected: Iterable[str] | None = None) -> str | None:
    """What is wrong with the files `record_path` lists, each named with its path; None when all are as
    written. A missing or unreadable record is damage too (nothing says what was written), and so is
    one that lists other files than `expected` (names relative to its folder), when given: a record
    copied beside another file vouches for the file it was written for, not for that one."""
    if not record_path.is_file():
        return f"{record_path}: missing (nothing records what was written, so it cannot be checked)"
    try:
        payload = _read(record_path)
    except (OSError, ValueError) as exc:
        return f"{record_path}: cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    # Records of an xel before content_crc32 have none: their content is taken as written.
    if "content_crc32" in payload and payload["content_crc32"] != _content_crc32(payload.get("content")):
        return f"{record_path}: what it records (its counts) changed since it was written (checksum differs)"
    names = sorted(payload["files"])
    if expected is not None and names != sorted(expected):
        return f"{record_path}: records {', '.join(names) or 'no file'}, not {', '.join(sorted(expected))}"
    try:
        signature = _signature(record_path, names)
    except OSError:
        signature = None
    if signature is not None and signature in _VERIFIED:
        return None
    problem = listed_damage(record_path.parent, payload["files"])
    if problem is None and signature is not None:
        _VERIFIED.add(signature)
    return problem


def read_content(record_path: Path) -> dict:
    """The `content` given to `seal` (call `damage` first: this reads the record only)."""
    return _read(record_path)["content"]


def forget(record_path: Path, owned: Iterable[str] | None = None) -> None:
    """Delete a record first (so the files no longer count), then the files it lists; missing ones are
    skipped. With `owned` (names relative to the record's folder), only the listed files among them
    go: a record copied beside another file lists the files of the one it was written for, which
    are whole and not the caller's to delete."""
    try:
        names = list(_read(record_path)["files"])
    except (OSError, ValueError):
        names = []
    if owned is not None:
        owned = set(owned)
        names = [name for name in names if name in owned]
    for path in (record_path, *(record_path.parent / name for name in names)):
        try:
            path.unlink(missing_ok=True)
        except OSError:  # a read-only cache: the caller reports what it cannot rebuild
            return
