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


def test_a_long_value_is_cut_in_the_middle_so_the_error_stays_readable() -> None:
    """Second break-test F4: model.json's types.mention of 100,000 strings made an E702 line of 1.4 MB."""
    from pipeline.core.errors import CacheError, InputError

    long_list = [f"TYPE{i}" for i in range(100_000)]
    error = CacheError("E702", path="model.json", detail=f"types.mention: must be ['PER'] (got {long_list})")
    message = error.format_message()
    assert (
        len(message) < 1_500
        and "characters left out" in message
        and message.endswith("re-run evaluate there with --force")
    )
    assert "types.mention: must be ['PER']" in message and "'TYPE99999']" in message
    error = InputError("E103", path="<mentions>", line=1, field="start", expected="an integer", got="x" * 10_000)
    assert len(error.format_message()) < 1_500 and error.format_message().startswith(
        "[E103] <mentions>:1: field 'start'"
    )
    short = InputError("E103", path="<mentions>", line=1, field="start", expected="an integer", got=0.5)
    assert "got 0.5;" in short.format_message()
