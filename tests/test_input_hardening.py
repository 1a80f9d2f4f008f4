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


# --- 2. language tags ----------------------------------------------------------------------

TAGS = {"en-US": "en", "EN": "en", " en ": "en", "pt_BR": "pt", "zh-Hant": "zh", "zh-Hant-TW": "zh", "es-419": "es",
        "sr_Latn": "sr", "nl": "nl"}


def tagged_records(tags: list[str]) -> list[dict]:
    return [{"id": f"m{i}", "doc_id": f"d{i}", "lang": tag, "mention": "Obama", "text": "Obama spoke.", "start": 0,
             "end": 5} for i, tag in enumerate(tags)]


def test_language_tags_read_as_their_primary_subtag_by_every_mention_reader(tmp_path: Path) -> None:
    from pipeline.link.sources import mention_chunks

    import polars as pl

    records = tagged_records(list(TAGS))
    jsonl = write_jsonl(tmp_path / "m.jsonl", records)
    parquet = tmp_path / "m.parquet"
    pl.DataFrame(records).write_parquet(parquet)
    expected = list(TAGS.values())
    assert read_mentions_jsonl(jsonl, None, CONTEXT_CHARS)["lang"].to_list() == expected
    for path in (jsonl, parquet):
        chunks = [read() for _, read in mention_chunks(path, None, 4, CONTEXT_CHARS, False, tmp_path)]
        assert pl.concat(chunks)["lang"].to_list() == expected


def test_one_document_tagged_en_and_en_us_is_one_language(tmp_path: Path) -> None:
    records = tagged_records(["en", "en-US"])
    records[1].update(doc_id="d0", text="Obama spoke. Obama left.", start=13, end=18)
    records[0]["text"] = records[1]["text"]
    path = write_jsonl(tmp_path / "m.jsonl", records)
    assert read_mentions_jsonl(path, None, CONTEXT_CHARS)["lang"].to_list() == ["en", "en"]  # no E117


@pytest.mark.parametrize("tag", ["", "  ", "12", "en US", "e", "en--US", "english!"])
def test_a_lang_that_is_no_language_tag_is_e103(tmp_path: Path, tag: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", tagged_records(["en", tag]))
    message = raises("E103", read_mentions_jsonl, path, None, CONTEXT_CHARS)
    assert message.startswith(f"[E103] {path}:2: field 'lang' should be ")


def test_docs_file_lang_is_checked(tmp_path: Path) -> None:
    from pipeline.formats.inputs import read_docs

    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d1", "lang": "en-GB", "text": "x"},
                                                {"doc_id": "d2", "lang": "4", "text": "y"}])
    assert raises("E103", read_docs, docs).startswith(f"[E103] {docs}:2: field 'lang' should be a language tag")


def test_doc_languages_file_normalises_and_checks_tags(tmp_path: Path) -> None:
    from pipeline.formats.doc_languages import read_doc_languages

    good = tmp_path / "good.tsv"
    good.write_text("doc_id\tlang\nd1\ten-US\nd2\tzh-Hant\nd3\tES\n", encoding="utf-8")
    assert read_doc_languages(good).rows() == [("d1", "en"), ("d2", "zh"), ("d3", "es")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("doc_id\tlang\nd1\ten\nd2\t42\n", encoding="utf-8")
    assert f"{bad}:3:" in raises("E220", read_doc_languages, bad)


def test_name_pairs_lang_normalised_and_checked(tmp_path: Path) -> None:
    from pipeline.formats.name_pairs import read_name_pairs

    good = tmp_path / "pairs.tsv"
    good.write_text("Москва\tMoscow\tru-RU\nParís\tParis\n", encoding="utf-8")
    assert read_name_pairs(good)["lang"].to_list() == ["ru", None]
    bad = tmp_path / "bad.tsv"
    bad.write_text("Москва\tMoscow\tru\nParís\tParis\t7\n", encoding="utf-8")
    assert f"{bad}:2:" in raises("E113", read_name_pairs, bad)


def test_language_settings_read_as_the_inputs_languages_are() -> None:
    from pipeline.core.config import ConfigError, EvaluateConfig, TrainConfig

    train = TrainConfig(train_languages=("en-US", "ES"), downsample_to_language="pt_BR")
    assert (train.train_languages, train.downsample_to_language) == (("en", "es"), "pt")
    evaluate = EvaluateConfig(languages=("zh-Hant",), fixed_thresholds={"EN-gb": -0.8, "nl": -1.0})
    assert (evaluate.languages, evaluate.fixed_thresholds) == (("zh",), {"en": -0.8, "nl": -1.0})
    with pytest.raises(ConfigError, match="E203"):
        TrainConfig(train_languages=("en", "12"))
