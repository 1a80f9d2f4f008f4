"""File edges shared by every stage: atomic writes, fingerprints, JSONL and Parquet.

Nothing here knows about stages; it only makes sure a file on disk is either complete
or absent, and that bad records are reported with their file and line.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.errors import CacheError, InputError, PipelineError, SchemaError, shown_path

logger = logging.getLogger(__name__)

# Lines of JSONL parsed per block: bounds memory on multi-million-line KBs.
JSONL_BLOCK_LINES = 200_000
# Test-only crash hook (tests/cli/test_crash_matrix.py); see `crash_point`.
CRASH_AT = "XEL_CRASH_AT"
CRASH_POINTS = ("half-written", "before-rename", "after-rename")
_crash_counts: dict[tuple[str, str], int] = {}


def crash_point(point: str, path: Path, temp_path: Path | None = None) -> None:
    """Test-only: SIGKILL this process at the n-th `point` reached for a file named like `path`.

    `XEL_CRASH_AT="<point>:<file name glob>:<n>"`, e.g. `after-rename:chunk-*.npz:3`
    kills right after the third encode chunk is in place. Points (all in `atomic_path`):
    `half-written` (the temporary file is first cut to half its bytes, as a kill while
    writing leaves it), `before-rename` (complete temporary file, final name not yet
    there), `after-rename` (the file is in place; whatever follows, e.g. the manifest,
    is not). Only the crash-matrix tests set the variable; unset, this returns at once.
    """
    spec = os.environ.get(CRASH_AT)
    if not spec:
        return
    want_point, pattern, count = spec.split(":")
    if want_point != point or not fnmatch.fnmatchcase(path.name, pattern):
        return
    seen = _crash_counts[(point, pattern)] = _crash_counts.get((point, pattern), 0) + 1
    if seen != int(count):
        return
    if point == "half-written" and temp_path is not None:
        os.truncate(temp_path, temp_path.stat().st_size // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def default_permissions(path: Path) -> None:
    """Give `path` (a file, or a folder and everything in it) the mode a plain `open` or `mkdir`
    would: 0666 / 0777 less the umask. tempfile's mkstemp/mkdtemp make 0600 / 0700, which would
    keep a run's outputs and model folders from the user's group (a shared model, a shared cache)."""
    umask = _umask()
    for item in [path, *(path.rglob("*") if path.is_dir() else ())]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(final_path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `final_path`; rename it into place on success.

    A crash or an exception leaves no file at `final_path` that looks finished. A failed
    write (disk full, quota, read-only folder), as an `OSError` or wrapped by the library
    that writes (`write_failure`), becomes `CacheError` E406 naming `final_path` as the user
    knows it (`shown_path`); an `OSError` about another file (an input the body reads) is
    left alone.
    """
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent)
        os.close(handle)
    except OSError as exc:
        raise CacheError("E406", path=shown_path(final_path), detail=exc.strerror or str(exc)) from None
    temp_path = Path(temp_name)
    try:
        yield temp_path
        crash_point("half-written", final_path, temp_path)
        crash_point("before-rename", final_path)
        if temp_path.exists():
            default_permissions(temp_path)
        os.replace(temp_path, final_path)
        crash_point("after-rename", final_path)
    except Exception as exc:
        raise _as_write_failure(exc, final_path, temp_path) from None
    finally:
        temp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def failed_writes(final_path: Path, temp_path: Path) -> Iterator[None]:
    """Turn a failed write in the block, which builds `final_path` (a folder) under `temp_path`, into
    `CacheError` E406 naming it (`write_failure`); other errors pass. Callers remove `temp_path`."""
    try:
        yield
    except Exception as exc:
        raise _as_write_failure(exc, final_path, temp_path) from None


def _as_write_failure(error: Exception, final_path: Path, temp_path: Path) -> Exception:
    """E406 naming `final_path` when `error` is a failed write of it (under `temp_path`), else `error`."""
    if isinstance(error, PipelineError):
        return error
    if isinstance(error, OSError) and error.filename is not None:
        named = Path(error.filename)
        if named != final_path and named != temp_path and temp_path not in named.parents:
            return error  # about another file (an input the body reads)
    detail = write_failure(error, temp_path.parent)  # measured while the temporary file still fills the disk
    if detail is None:
        return error
    return CacheError("E406", path=shown_path(final_path), detail=detail)


# Free bytes under which a library's failed write is taken for a full disk (`write_failure`).
FULL_DISK_BYTES = 1 << 20
# The operating system's write refusals, as libraries quote them in their own errors.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO)


def write_failure(error: BaseException, folder: Path) -> str | None:
    """Why a write into `folder` failed, when `error` (raised while writing there) is the operating
    system's refusal, else None (a bug, or a failure that is not about the disk).

    Libraries wrap it: polars raises `ComputeError` ("... No space left on device (os error 28)",
    or only "Invalid thrift: transport error" when the footer does not fit), torch and faiss
    `RuntimeError`, safetensors its own error; pyarrow, h5py and numpy raise `OSError`. A
    library's error that quotes no errno is taken for a full disk when `folder`'s disk has less
    than `FULL_DISK_BYTES` free. Returns the system's text, e.g. "No space left on device".
    """
    if isinstance(error, OSError):
        return error.strerror or str(error)
    text = str(error)
    quoted = re.search(r"os error (\d+)", text)  # Rust's io::Error
    if quoted is not None:
        return os.strerror(int(quoted.group(1)))
    for number in _WRITE_ERRNOS:
        if os.strerror(number) in text:
            return os.strerror(number)
    try:
        full = shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        full = False
    if full and (isinstance(error, (pl.exceptions.PolarsError, RuntimeError, ValueError)) or _is_safetensors(error)):
        logger.debug("a write into %s failed on a full disk: %s", folder, text)
        return os.strerror(errno.ENOSPC)
    return None


def _is_safetensors(error: BaseException) -> bool:
    return type(error).__name__ == "SafetensorError"


def remove_leftover_temps(folder: Path) -> int:
    """Delete the temporary files and folders (`.<name>.<random>.tmp`) that killed runs left in `folder`.

    `atomic_path` removes its temporary file on any exception, but a SIGKILL skips that.
    Only call this while holding the run lock, when no other process writes to `folder`;
    returns how many files went.
    """
    removed = 0
    for path in folder.glob(".*.tmp") if folder.is_dir() else ():
        if path.is_dir():  # a folder built under a temporary name (the KB indexes)
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("%s: removed %d temporary file(s) left by an interrupted run", folder, removed)
    return removed


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temp_path:
        temp_path.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as temp_path:
        frame.write_parquet(temp_path, compression="zstd", statistics=True)


def file_fingerprint(path: Path) -> str:
    """Content hash of a file (or of every file under a folder, sorted by name)."""
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file_path in files:
        digest.update(str(file_path.relative_to(path) if path.is_dir() else "").encode())
        with open(file_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def scan_parquet_checked(path: Path, required: dict[str, pl.DataType], stage: str) -> pl.LazyFrame:
    """Open a stage's Parquet output lazily and check its columns before reading data."""
    if not path.exists():
        raise CacheError("E401", path=path, stage=stage)
    try:
        frame = pl.scan_parquet(path)
        schema = frame.collect_schema()
    except Exception as exc:  # polars raises several types for damaged files
        raise SchemaError("E302", path=path, detail=str(exc).splitlines()[0]) from None
    for column in required:
        if column not in schema:
            raise SchemaError("E301", path=path, column=column, columns=", ".join(schema.names()))
    return frame


def collect_checked(frame: pl.LazyFrame, *paths: Path) -> pl.DataFrame:
    """Collect a frame scanned from stage Parquet files (`paths`); damaged data is E302 naming the file.

    A file whose footer is intact passes `scan_parquet_checked`, but a damaged data page
    only fails here: as a polars error, or as a Rust panic that also prints a backtrace
    on stderr. Stderr is held back while collecting and shown again unless the failure
    is a damaged file. When the query fails, each file is read alone to find the one
    that is damaged; if none is, the failure is not about the files and is raised as is.
    """
    failure: BaseException | None = None
    with _stderr_held() as held:
        try:
            return frame.collect()
        except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
            failure = exc
            for path in paths:
                try:
                    pl.scan_parquet(path).collect()
                except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError) as damage:
                    held.discard()
                    detail = str(damage).splitlines()[0] if str(damage) else type(damage).__name__
                    raise SchemaError("E302", path=path, detail=f"a data page is damaged: {detail}") from None
    raise failure


class _HeldStream:
    def __init__(self, sink) -> None:
        self.sink = sink
        self.keep = True

    def discard(self) -> None:
        self.keep = False


@contextlib.contextmanager
def _stderr_held() -> Iterator[_HeldStream]:
    """Send file descriptor 2 to a temporary file for the block, then replay it unless discarded.

    Rust panics (polars) write to the descriptor directly, past Python's sys.stderr.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to hold
        yield _HeldStream(None)
        return
    with tempfile.TemporaryFile() as sink:
        held = _HeldStream(sink)
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if held.keep:
                sink.seek(0)
                text = sink.read()
                if text:
                    os.write(2, text)


def _decode_line(path: Path, line_number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("E110", path=path, line=line_number, detail=exc.reason + f" at byte {exc.start}") from None


def _parse_line(path: Path, line_number: int, text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("E101", path=path, line=line_number, detail=exc.msg + f" at column {exc.colno}") from None
    if not isinstance(record, dict):
        raise InputError("E101", path=path, line=line_number, detail=f"expected an object, got {type(record).__name__}")
    return record


def iter_jsonl_blocks(path: Path, block_lines: int = JSONL_BLOCK_LINES) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Yield blocks of (line number, record) from a JSONL file.

    Tolerates a UTF-8 BOM, CRLF line ends and blank lines; a bad line raises an
    `InputError` naming the file and line. Memory is bounded by `block_lines`.
    """
    if not path.exists():
        raise InputError("E108", path=path)
    block: list[tuple[int, dict[str, Any]]] = []
    seen_any = False
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if line_number == 1 and raw.startswith(b"PAR1"):  # Parquet's magic bytes: the wrong format, not bad text
                raise InputError(
                    "E119",
                    path=path,
                    kind="JSONL",
                    detail="it is a Parquet file",
                    fix="give this input as JSONL, one record per line",
                )
            text = _decode_line(path, line_number, raw).strip()
            if not text:
                continue
            block.append((line_number, _parse_line(path, line_number, text)))
            seen_any = True
            if len(block) >= block_lines:
                yield block
                block = []
    if block:
        yield block
    if not seen_any:
        raise InputError("E107", path=path)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what an Int64 column holds


def check_record_fields(
    path: Path, line_number: int, record: dict[str, Any], fields: dict[str, tuple[type | tuple[type, ...], bool]]
) -> None:
    """Check required fields and types of one record: `fields` maps name -> (types, required)."""
    for name, (types, required) in fields.items():
        value = record.get(name)
        if value is None:
            if required:
                raise InputError("E102", path=path, line=line_number, field=name)
            continue
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = {
                "int": "an integer",
                "float": "a number",
                "str": "a string",
                "list": "a list",
                "dict": "an object",
                "bool": "true or false",
            }
            expected = " or ".join(
                names.get(t.__name__, t.__name__) for t in (types if isinstance(types, tuple) else (types,))
            )
            raise InputError("E103", path=path, line=line_number, field=name, expected=expected, got=value)
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            # Python's int has no bound, the Int64 columns it goes into do (polars raises a TypeError).
            expected = f"an integer from {INT64_MIN} to {INT64_MAX}"
            raise InputError("E103", path=path, line=line_number, field=name, expected=expected, got=value)
