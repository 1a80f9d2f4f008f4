"""The coded message catalogues: every error and warning template formats to one line."""

from __future__ import annotations

import logging
import string

import pytest

from pipeline.core.errors import InputError, Warnings, warn


def _codes(catalogue: type, prefix: str) -> list[str]:
    return sorted(name for name in vars(catalogue) if name.startswith(prefix) and name[1:].isdigit())


@pytest.mark.parametrize("code", _codes(Warnings, "W"))
def test_every_warning_formats_to_one_coded_line(code: str, caplog: pytest.LogCaptureFixture) -> None:
    fields = {name: "x\ny" for _, name, _, _ in string.Formatter().parse(getattr(Warnings, code)) if name}
    with caplog.at_level(logging.WARNING):
        line = warn(logging.getLogger("xel-test"), code, **fields)
    assert line.startswith(f"[{code}] ") and "\n" not in line
    assert caplog.records[-1].getMessage() == line


def test_warn_names_its_fields() -> None:
    line = warn(logging.getLogger("xel-test"), "W102", count=3, mentions=4, path="m.jsonl", example="Q1, Q2")
    assert line == (
        "[W102] 3 gold KB id(s) of 4 mention(s) in m.jsonl are not in the KB (e.g. Q1, Q2); those mentions "
        "cannot be linked right: add the entities to the KB, or check the ids"
    )


def test_error_is_one_line_with_its_code() -> None:
    error = InputError("E107", path="empty.jsonl")
    assert (
        error.message
        == "[E107] empty.jsonl: file is empty; it needs at least one record: add records or give another file"
    )
    assert error.exit_code == 2
