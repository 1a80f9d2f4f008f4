"""Input hardening: messages that say what to do, one text per document, language tags
normalised, inline texts windowed as docs texts are.

Every reader is covered where it applies: the stages' mention reading (`read_mentions_jsonl`,
`load_mentions`), link's corpus reading (JSONL and Parquet chunks, `check_corpus`) and TAC.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from conftest import write_jsonl
from pipeline.core.errors import Errors, InputError
from pipeline.formats.inputs import read_mentions_jsonl, read_tac_mentions

CONTEXT_CHARS = 600


def raises(code: str, call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value.format_message()
    return caught.value.format_message()


# --- 3. every message says what to do ------------------------------------------------------

# Templates whose advice comes whole from the caller (each caller's detail says what to do).
PASS_THROUGH = {"E112", "E411", "E605"}


@pytest.mark.parametrize("code", sorted(name for name in vars(Errors) if name[0] == "E" and name[1:].isdigit()))
def test_every_error_template_has_a_what_to_do_clause(code: str) -> None:
    template = getattr(Errors, code)
    fields = {name: "X" for _, name, _, _ in string.Formatter().parse(template) if name}
    text = template.format(**{**fields, "more": "", "hint": ""})
    if code in PASS_THROUGH:
        assert text.endswith(": X")
    else:
        assert "; " in text.split(": ", 1)[-1], text  # what is wrong; what to do


def test_wrong_type_says_what_to_write(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Obama",
                                              "text": "Obama", "start": "0", "end": 5}])
    message = raises("E103", read_mentions_jsonl, path, None, CONTEXT_CHARS)
    assert message == (f"[E103] {path}:1: field 'start' should be an integer, got '0'; write an integer there")


def test_missing_tac_source_document_names_the_tab_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "ENG_1.txt").write_text("Barack Obama spoke.", encoding="utf-8")
    tab = tmp_path / "dev.tab"
    tab.write_text("gold\tM1\tObama\tENG_1:7-11\tQ1\tPER\tNAM\t1.0\n"
                   "gold\tM2\tParis\tENG_404:0-4\tQ2\tGPE\tNAM\t1.0\n", encoding="utf-8")
    message = raises("E108", read_tac_mentions, {"dev": tab}, source, CONTEXT_CHARS)
    assert message.startswith(f"[E108] {source / 'ENG_404.txt'}: not found (the source document 'ENG_404' of "
                              f"mention 'M2' on {tab}:2;")
    assert "put the document's file in" in message and "fix the doc_id on that line" in message
