"""Two runs on one run folder: the second refuses, a dead run's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.core.errors import CacheError
from pipeline.core.lock import LOCK_NAME, run_lock


def _write_lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(
        json.dumps(
            {"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00", "command": "run"}
        )
    )


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_second_holder_is_refused_while_the_first_lives(tmp_path):
    with run_lock(tmp_path, "train"):
        with pytest.raises(CacheError, match=r"\[E405\].*" + LOCK_NAME):
            with run_lock(tmp_path, "evaluate"):
                pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_is_released_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path, "train"):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("content", ["dead-pid", "unreadable"])
def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path, caplog, content):
    if content == "dead-pid":
        _write_lock(tmp_path, _dead_pid())
    else:
        (tmp_path / LOCK_NAME).write_text("{half")
    with caplog.at_level("WARNING"):
        with run_lock(tmp_path, "run") as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text


def test_lock_from_another_host_is_refused(tmp_path):
    _write_lock(tmp_path, _dead_pid(), host="some-other-node")
    with pytest.raises(CacheError, match="E405"):
        with run_lock(tmp_path, "run"):
            pass


def test_cli_refuses_a_locked_run_folder_and_keeps_its_config(tmp_path, make_run_config):
    config_path = make_run_config()
    run_dir = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(run_dir, sleeper.pid)
        (run_dir / "config.json").write_text("the running run's config")
        result = CliRunner().invoke(main, ["triage", "--config", str(config_path)])
        assert result.exit_code == 2
        assert result.output.strip().startswith("Error: [E405]")
        assert (run_dir / "config.json").read_text() == "the running run's config"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_killed_run_not_yet_reaped_holds_no_lock() -> None:
    """A process that has exited but waits for its parent (a zombie, as right after `timeout -s KILL`)
    is not alive: its lock is stale."""
    import time

    from pipeline.core.lock import _alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while _alive(child.pid) and time.time() < deadline:  # exited, not reaped: state Z
        time.sleep(0.05)
    try:
        assert not _alive(child.pid)
        assert _alive(os.getpid())
    finally:
        child.wait()
