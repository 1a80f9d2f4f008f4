"""Outputs get the permissions a plain open/mkdir would give (0666/0777 less the umask), not
tempfile's private 0600/0700: a run's outputs and a model folder are meant to be shared."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.core.io import default_permissions, write_text_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    write_text_atomic(tmp_path / "system.tab", "x\n")
    assert mode(tmp_path / "system.tab") == 0o644


def test_a_temporary_folder_renamed_into_place_follows_the_umask(tmp_path: Path, umask_022: None) -> None:
    import tempfile

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "model.json").write_text("{}", encoding="utf-8")
    (folder / "model.json").chmod(0o600)
    default_permissions(folder)
    assert mode(folder) == 0o755 and mode(folder / "model.json") == 0o644
