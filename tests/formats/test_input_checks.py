"""Unit tests of the issue-13 input rules that the CLI catalogue (test_bad_inputs.py) runs end to end:
document-offset mentions (empty spans, fragments), 11-column TAC files, message details."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_jsonl
from pipeline.core.errors import InputError
from pipeline.formats.input_checks import normalisation_hint
from pipeline.formats.inputs import read_mentions_jsonl
from pipeline.formats.tac import read_tab

DOC = "Он стал чемпионом мира, а потом чемпион мира и Европы уехал домой."


def error_of(call, *args) -> InputError:
    with pytest.raises(InputError) as caught:
        call(*args)
    return caught.value


def test_empty_document_span_is_e114(tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d1", "text": "Paris is big."}])
    records = [
        {"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Paris", "doc_start": 0, "doc_end": 5},
        {"id": "m2", "doc_id": "d1", "lang": "en", "mention": "big", "doc_start": 9, "doc_end": 9},
        {"id": "m3", "doc_id": "d1", "lang": "en", "mention": "is", "doc_start": 8, "doc_end": 6},
    ]
    path = write_jsonl(tmp_path / "mentions.jsonl", records)
    error = error_of(read_mentions_jsonl, path, docs, 10)
    assert error.code == "E114"
    assert f"{path}:2: mention 'm2' has offsets 9-9" in error.message and "(1 more line(s) like it)" in error.message


def test_fragments_in_document_offsets_are_relative_to_the_window(tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d1", "text": DOC}])
    first = DOC.index("чемпион мира и")
    europe = DOC.index("Европы")
    record = {
        "id": "m1",
        "doc_id": "d1",
        "lang": "ru",
        "mention": "чемпион Европы",
        "fragments": [[first, first + len("чемпион")], [europe, europe + len("Европы")]],
    }
    path = write_jsonl(tmp_path / "mentions.jsonl", [record])
    row = read_mentions_jsonl(path, docs, 5).row(0, named=True)  # a 5-character window each side
    assert (row["doc_start"], row["doc_end"]) == (first, europe + len("Европы"))  # the covering span
    assert row["context"][row["start"] : row["end"]] == "чемпион мира и Европы"
    assert row["mention"] == "чемпион Европы"
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{**record, "mention": "чемпион мира"}])
    error = error_of(read_mentions_jsonl, wrong, docs, 5)
    assert error.code == "E106" and "'чемпион Европы'" in error.message  # what the fragments cover
    shifted = write_jsonl(
        tmp_path / "shifted.jsonl", [{**record, "doc_start": first + 1, "doc_end": europe + len("Европы")}]
    )
    error = error_of(read_mentions_jsonl, shifted, docs, 5)
    assert error.code == "E118" and f"they span {first}-" in error.message


def test_same_span_with_text_windows_says_to_give_document_offsets(tmp_path: Path) -> None:
    records = [
        {"id": f"m{i}", "doc_id": "d1", "lang": "en", "text": text, "start": 0, "end": 5, "mention": text[:5]}
        for i, text in enumerate(["Paris is big.", "Rome is old."])
    ]
    path = write_jsonl(tmp_path / "mentions.jsonl", records)
    error = error_of(read_mentions_jsonl, path, None, 10)
    assert error.code == "E115" and f"{path}:2:" in error.message and "give doc_start/doc_end" in error.message


def test_eleven_column_tab_reads_like_eight(tmp_path: Path) -> None:
    eight = [
        "run\tm1\tBarack Obama\tENG_NW_1:0-11\tE0001\tPER\tNAM\t0.9",
        "run\tm2\the\tmeantime:en:doc:1:20-21\tNIL7\tPER\tNOM\t1.0",
    ]
    (tmp_path / "eight.tab").write_text("\n".join(eight) + "\n", encoding="utf-8")
    (tmp_path / "eleven.tab").write_text(
        "\n".join(line + "\tY\tsome wiki text\t" for line in eight) + "\n", encoding="utf-8"
    )
    assert read_tab(tmp_path / "eleven.tab").equals(read_tab(tmp_path / "eight.tab"))
    (tmp_path / "mixed.tab").write_text(eight[0] + "\tY\tw\tx\n" + eight[1] + "\n", encoding="utf-8")
    error = error_of(read_tab, tmp_path / "mixed.tab")
    assert error.code == "E112" and "mixed.tab:2: has 8 tab-separated columns, expected 11" in error.message


def test_normalisation_hint() -> None:
    assert "NFC" in normalisation_hint("Bogota\u0301", "Bogotá")
    assert "NFKC" in normalisation_hint("ＵＮ", "UN")
    assert normalisation_hint("Bogota", "Bogotá") == ""
