"""One writer per run folder: a lock file that a second run refuses and a dead run leaves stale.

The lock is created with O_EXCL, so two runs starting at once cannot both take it. It
records the holder's pid, host and start time; a lock whose pid no longer lives on this
host is stale (a killed run) and is taken over with a warning. A lock from another host
cannot be checked, so it is refused with the way to clear it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import CacheError, warn

logger = logging.getLogger(__name__)

LOCK_NAME = ".xel.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether `pid` has exited and only waits for its parent to reap it (state Z in /proc): a run
    killed a moment ago (`timeout -s KILL`) is such a process, and holds nothing any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:  # no /proc (not Linux) or gone meanwhile
        return False
    return stat[stat.rfind(")") + 1 :].split()[:1] == ["Z"]  # the state follows the command name in parentheses


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # half-written by a run killed while taking it: treated as stale below


def _write_holder(handle: int, path: Path, holder: dict) -> None:
    """Write the holder into the new lock file `path` (open as `handle`); a write that fails (a full
    disk: the file is made, its bytes are not) removes the file and is E406 naming it, so no empty
    lock is left for the next run to take over."""
    data = json.dumps(holder).encode("utf-8")
    try:
        try:
            while data:
                data = data[os.write(handle, data) :]
        finally:
            os.close(handle)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise CacheError("E406", path=path, detail=exc.strerror or str(exc)) from None


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[Path]:
    """Hold `run_dir`'s lock for the duration of the block; removed on exit, even on errors."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
    }
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read_holder(path)
            same_host = other.get("host") == holder["host"]
            if other and (not same_host or _alive(int(other.get("pid", -1)))):
                raise CacheError(
                    "E405",
                    path=path,
                    pid=other.get("pid"),
                    host=other.get("host"),
                    started=other.get("started"),
                    command=other.get("command"),
                ) from None
            warn(logger, "W401", path=path, detail=other or "unreadable")
            path.unlink(missing_ok=True)
            continue
        _write_holder(handle, path, holder)
        break
    else:
        raise CacheError("E405", path=path, pid="?", host="?", started="?", command="?")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
