"""A path the operating system refuses is one coded line (E412), whichever command meets it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cli import main
from pipeline.core.errors import os_error

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_folder_under_a_file_is_one_line_e412(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["triage", "--config", str(ROOT / "configs" / "demo.toml"), "--run-dir", str(a_file / "run")]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: [E412] ") and "a file where a folder is wanted" in lines[-1]
    assert str(a_file) in lines[-1] and "Traceback" not in result.output
    assert a_file.read_text(encoding="utf-8") == "not a folder\n"


def test_os_error_names_the_path_and_the_kind_of_refusal() -> None:
    error = os_error(PermissionError(13, "Permission denied", "/data/out/.xel.lock"))
    assert error.code == "E412"
    assert error.format_message().startswith(
        "[E412] /data/out/.xel.lock: no permission (the operating system refused: Permission denied)"
    )
    assert (
        "a folder where a file is wanted" in os_error(IsADirectoryError(21, "Is a directory", "docs")).format_message()
    )
    # A full disk is E406 (free space), whether or not the system named the file.
    assert (
        os_error(OSError(28, "No space left on device"))
        .format_message()
        .startswith("[E406] (the system named no path): cannot write (No space left on device)")
    )
    # An atomic write's temporary file is named by the file it stands for.
    assert (
        os_error(PermissionError(1, "Operation not permitted", "/proc/.xel_exp.17rp5vx5.tmp"))
        .format_message()
        .startswith("[E412] /proc/xel_exp: no permission")
    )
