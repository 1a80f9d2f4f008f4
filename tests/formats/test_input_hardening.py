"""Input hardening: messages that say what to do, one text per document, language tags
normalised, inline texts windowed as docs texts are.

Every reader is covered where it applies: the stages' mention reading (`read_mentions_jsonl`,
`load_mentions`), link's corpus reading (JSONL and Parquet chunks, `check_corpus`) and TAC.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from conftest import raises_input_error as raises
from conftest import write_jsonl
from pipeline.core.errors import Errors
from pipeline.formats.inputs import read_mentions_jsonl, read_tac_mentions

CONTEXT_CHARS = 600


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
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [{"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Obama", "text": "Obama", "start": "0", "end": 5}],
    )
    message = raises("E103", read_mentions_jsonl, path, None, CONTEXT_CHARS)
    assert message == (f"[E103] {path}:1: field 'start' should be an integer, got '0'; write an integer there")


def test_missing_tac_source_document_names_the_tab_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "ENG_1.txt").write_text("Barack Obama spoke.", encoding="utf-8")
    tab = tmp_path / "dev.tab"
    tab.write_text(
        "gold\tM1\tObama\tENG_1:7-11\tQ1\tPER\tNAM\t1.0\ngold\tM2\tParis\tENG_404:0-4\tQ2\tGPE\tNAM\t1.0\n",
        encoding="utf-8",
    )
    message = raises("E108", read_tac_mentions, {"dev": tab}, source, CONTEXT_CHARS)
    assert message.startswith(
        f"[E108] {source / 'ENG_404.txt'}: not found (the source document 'ENG_404' of mention 'M2' on {tab}:2;"
    )
    assert message.endswith(
        f"also tried ENG_404.xml, ENG_404); put the document's file in {source}, fix the doc_id "
        "on that line, or check the path in the config or on the command line"
    )


# --- 2. language tags ----------------------------------------------------------------------

TAGS = {
    "en-US": "en",
    "EN": "en",
    " en ": "en",
    "pt_BR": "pt",
    "zh-Hant": "zh",
    "zh-Hant-TW": "zh",
    "es-419": "es",
    "sr_Latn": "sr",
    "nl": "nl",
    "und": "und",
    "qaa": "qaa",
}


def tagged_records(tags: list[str]) -> list[dict]:
    return [
        {
            "id": f"m{i}",
            "doc_id": f"d{i}",
            "lang": tag,
            "mention": "Obama",
            "text": "Obama spoke.",
            "start": 0,
            "end": 5,
        }
        for i, tag in enumerate(tags)
    ]


def test_language_tags_read_as_their_primary_subtag_by_every_mention_reader(tmp_path: Path) -> None:
    import polars as pl

    from pipeline.link.sources import mention_chunks

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


@pytest.mark.parametrize("tag", ["", "  ", "12", "en US", "e", "en--US", "english!", "english", "Engl-US", "unknown"])
def test_a_lang_that_is_no_language_tag_is_e103(tmp_path: Path, tag: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", tagged_records(["en", tag]))
    message = raises("E103", read_mentions_jsonl, path, None, CONTEXT_CHARS)
    assert message.startswith(f"[E103] {path}:2: field 'lang' should be ")


def test_the_language_tag_message_gives_its_examples_once(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", tagged_records(["12"]))
    assert raises("E103", read_mentions_jsonl, path, None, CONTEXT_CHARS) == (
        f"[E103] {path}:1: field 'lang' should be a language tag, got '12'; write a language tag there, such as "
        "'en', 'EN', 'en-US' or 'pt_BR': a 2-3 letter language code, then optional '-' or '_' parts, read as that "
        "code ('en', 'pt')"
    )


def test_docs_file_lang_is_checked(tmp_path: Path) -> None:
    from pipeline.formats.inputs import read_docs

    docs = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"doc_id": "d1", "lang": "en-GB", "text": "x"}, {"doc_id": "d2", "lang": "4", "text": "y"}],
    )
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
    with pytest.raises(ConfigError, match="E203"):
        EvaluateConfig(languages=("english",))
    assert EvaluateConfig(languages=("unknown",)).languages == ("unknown",)  # TAC documents whose id says none


@pytest.mark.parametrize("thresholds", ["{en = -0.7, EN = -0.5}", "{en-US = -0.7, en_GB = -0.7}"])
def test_two_threshold_keys_of_one_language_are_e203(tmp_path: Path, thresholds: str) -> None:
    from pipeline.core.config_file import load_config
    from pipeline.core.errors import ConfigError

    config = tmp_path / "run.toml"
    config.write_text(
        f'[inputs]\nkb = "kb.jsonl"\nmentions = "m.jsonl"\n[evaluate]\nfixed_thresholds = {thresholds}\n',
        encoding="utf-8",
    )
    first, second = [part.split("=")[0].strip() for part in thresholds.strip("{}").split(",")]
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.format_message().startswith(f"[E203] {config.resolve()}:5 [evaluate]: fixed_thresholds = ")
    assert f"keys '{first}' and '{second}' both mean language 'en'; keep one of them" in caught.value.format_message()
    config.write_text('[inputs]\nkb = "kb.jsonl"\nmentions = "m.jsonl"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="keys 'en' and 'En' both mean language 'en'"):
        load_config(config, overrides=("evaluate.fixed_thresholds={en=-0.7,En=-0.5}",))


# --- 1. one text per document --------------------------------------------------------------

TEXT_A = "Barack Obama met Angela Merkel in Berlin."
TEXT_B = "Barack Obama met Angela Merkel in Paris."


def inline(mention_id: str, text: str, surface: str, doc_id: str = "d1", **extra) -> dict:
    start = text.index(surface)
    return {
        "id": mention_id,
        "doc_id": doc_id,
        "lang": "en",
        "mention": surface,
        "text": text,
        "start": start,
        "end": start + len(surface),
        **extra,
    }


def two_texts() -> list[dict]:
    return [
        inline("m1", TEXT_A, "Barack Obama"),
        inline("m2", TEXT_A, "Angela Merkel"),
        inline("m3", TEXT_B, "Paris"),
        inline("m4", TEXT_B, "Obama"),
    ]


def test_one_doc_id_given_two_inline_texts_is_e120(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", two_texts())
    message = raises("E120", read_mentions_jsonl, path, None, CONTEXT_CHARS)
    assert message.startswith(
        f"[E120] {path}:3: mention 'm3' gives document 'd1' a text other than the one line 1 "
        "gives it; a document has one text"
    )
    assert "distinct doc_ids" in message and "(1 more line(s) like it)" in message


def test_the_same_text_repeated_and_distinct_windows_are_accepted(tmp_path: Path) -> None:
    records = [
        inline("m1", TEXT_A, "Barack Obama"),
        inline("m2", TEXT_A, "Berlin"),
        inline("m3", TEXT_B, "Paris", "d2"),
    ]
    assert read_mentions_jsonl(write_jsonl(tmp_path / "m.jsonl", records), None, CONTEXT_CHARS).height == 3
    # MEANTIME's form: each `text` a window of the document, placed by doc_start/doc_end: windows differ.
    document = TEXT_A + " " + TEXT_B
    windows = [
        inline("w1", TEXT_A, "Berlin", doc_start=document.index("Berlin"), doc_end=document.index("Berlin") + 6),
        inline("w2", TEXT_B, "Paris", doc_start=document.index("Paris"), doc_end=document.index("Paris") + 5),
    ]
    frame = read_mentions_jsonl(write_jsonl(tmp_path / "w.jsonl", windows), None, CONTEXT_CHARS)
    assert frame["doc_start"].to_list() == [document.index("Berlin"), document.index("Paris")]


def test_an_inline_text_other_than_the_docs_file_text_is_e120(tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d1", "lang": "en", "text": TEXT_A}])
    records = [
        {"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Obama", "doc_start": 7, "doc_end": 12},
        inline("m2", TEXT_B, "Paris"),
    ]
    path = write_jsonl(tmp_path / "m.jsonl", records)
    assert raises("E120", read_mentions_jsonl, path, docs, CONTEXT_CHARS).startswith(f"[E120] {path}:2:")
    records[1] = inline("m2", TEXT_A, "Berlin")  # the docs file's own text: one text
    assert read_mentions_jsonl(write_jsonl(path, records), docs, CONTEXT_CHARS).height == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_two_texts_in_different_link_chunks_are_e120_before_linking(tmp_path: Path, suffix: str) -> None:
    import polars as pl

    from pipeline.link.sources import check_corpus, mention_chunks

    path = tmp_path / f"m{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, two_texts())
    else:
        pl.DataFrame(two_texts()).write_parquet(path)
    chunks = mention_chunks(path, None, 2, CONTEXT_CHARS, False, tmp_path)  # lines 1-2 and 3-4: each chunk one text
    assert raises("E120", check_corpus, chunks, path).startswith(f"[E120] {path}:3: mention 'm3'")


# --- 4. inline texts windowed as docs texts are -------------------------------------------


def test_a_long_inline_text_gives_the_context_the_same_text_via_docs_gives(tmp_path: Path) -> None:
    filler = "Lorem ipsum dolor sit amet. " * 20_000  # 560k characters each side
    text = filler + "Barack Obama spoke in Berlin. " + filler
    start = text.index("Obama")
    context_chars = 100
    inline_path = write_jsonl(tmp_path / "inline.jsonl", [inline("m1", text, "Obama")])
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d1", "lang": "en", "text": text}])
    docs_path = write_jsonl(
        tmp_path / "via-docs.jsonl",
        [{"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Obama", "doc_start": start, "doc_end": start + 5}],
    )
    columns = ["context", "start", "end", "doc_start", "doc_end"]
    from_inline = read_mentions_jsonl(inline_path, None, context_chars).select(columns).row(0)
    from_docs = read_mentions_jsonl(docs_path, docs, context_chars).select(columns).row(0)
    assert from_inline == from_docs
    assert from_inline[0] == text[start - 100 : start + 105] and from_inline[1:] == (100, 105, start, start + 5)


def test_tac_doc_ids_carry_language_tags_read_as_lang_fields_are(tmp_path: Path) -> None:
    import polars as pl

    from pipeline.formats.tac import language_expr, language_of_doc

    doc_ids = ["mycorp:en-US:doc1", "mycorp:PT_br:7", "meantime:EN:1", "c:zh-Hant:2", "doc:17:x", "c:english:1", "d"]
    expected = ["en", "pt", "en", "zh", None, None, None]
    assert [language_of_doc(doc_id) for doc_id in doc_ids] == expected
    assert (
        pl.DataFrame({"doc_id": doc_ids}).select(language_expr(pl.col("doc_id")).alias("lang"))["lang"].to_list()
        == expected
    )
    source = tmp_path / "source"
    source.mkdir()
    tab = tmp_path / "test.tab"
    lines = []
    for number, doc_id in enumerate(doc_ids[:2] + doc_ids[-1:]):
        (source / f"{doc_id.replace(':', '__')}.txt").write_text("Barack Obama spoke.", encoding="utf-8")
        lines.append(f"gold\tM{number}\tObama\t{doc_id}:7-11\tQ1\tPER\tNAM\t1.0\n")
    tab.write_text("".join(lines), encoding="utf-8")
    assert read_tac_mentions({"test": tab}, source, CONTEXT_CHARS)["lang"].to_list() == ["en", "pt", "unknown"]


@pytest.mark.parametrize(
    ("value", "languages"),
    [('"en"', ("en",)), ("'en'", ("en",)), ('"en", "ES"', ("en", "es")), ("en,es", ("en", "es")), ("", ())],
)
def test_set_reads_a_quoted_string_for_a_list_setting_as_a_list(tmp_path: Path, value: str, languages: tuple) -> None:
    from pipeline.core.config_file import load_config

    config = tmp_path / "run.toml"
    config.write_text('[inputs]\nkb = "kb.jsonl"\nmentions = "m.jsonl"\n', encoding="utf-8")
    assert load_config(config, overrides=(f"evaluate.languages={value}",)).evaluate.languages == languages


@pytest.mark.parametrize(
    ("value", "reason"),
    [('"en', 'a list is written ["en", "es"] (TOML) or en,es'), ("en,,es", "language codes cannot be empty")],
)
def test_set_refuses_a_list_it_cannot_read_whole(tmp_path: Path, value: str, reason: str) -> None:
    from pipeline.core.config_file import load_config
    from pipeline.core.errors import ConfigError

    config = tmp_path / "run.toml"
    config.write_text('[inputs]\nkb = "kb.jsonl"\nmentions = "m.jsonl"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config, overrides=(f"evaluate.languages={value}",))
    assert caught.value.code == "E203" and f"is invalid: {reason};" in caught.value.format_message()


@pytest.mark.parametrize("languages", ["", "en,,es", "en,"])
def test_experiment_refuses_an_empty_language_entry_before_loading_anything(tmp_path: Path, languages: str) -> None:
    from click.testing import CliRunner

    from cli import main

    config = tmp_path / "run.toml"
    config.write_text('[inputs]\nkb = "kb.jsonl"\nmentions = "m.jsonl"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["experiment", "--config", str(config), "--languages", languages])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: [E203] --languages: languages = {json.dumps(languages)} is invalid: has an empty entry; give L1,L2,... (leave "
        "out --languages for every language); give --languages another value on the command line"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.toml"]


# --- one document's texts against the docs file, and lines that do not depend on the chunk size -----


def one_document(fault: str) -> list[dict]:
    """Six mentions of d1 (lines 1-6); line 5 differs from the others as `fault` says."""
    records = [
        inline(f"m{n}", TEXT_A, surface)
        for n, surface in enumerate(["Barack", "Obama", "met", "Angela", "Merkel", "Berlin"], start=1)
    ]
    if fault == "text":
        records[4] = inline("m5", TEXT_B, "Merkel")
    elif fault == "lang":
        records[4]["lang"] = "de"
    elif fault == "id":
        records[4]["id"] = records[5]["id"] = "m1"
    else:  # span: lines 5 and 6 repeat line 1's mention
        records[4], records[5] = (inline("m5", TEXT_A, "Barack"), inline("m6", TEXT_A, "Barack"))
    return records


FIRST_FAULT = {
    "text": "[E120] {path}:5: mention 'm5' gives document 'd1' a text other than the one line 1 gives it;",
    "lang": "[E117] {path}:5: mention 'm5' says document 'd1' is 'de', but line 1 says 'en';",
    "id": "[E104] {path}:5: duplicate mention id 'm1' (first seen on line 1);",
    "span": "[E115] {path}:5: mention 'm5' covers the same span d1:0-6 as mention 'm1' on line 1;",
}


@pytest.mark.parametrize("fault", list(FIRST_FAULT))
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_link_names_the_first_differing_line_whatever_the_chunk_size(tmp_path: Path, fault: str, suffix: str) -> None:
    import polars as pl

    from pipeline.link.sources import check_corpus, mention_chunks

    path = tmp_path / f"m{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, one_document(fault))
    else:
        pl.DataFrame(one_document(fault)).write_parquet(path)
    expected = FIRST_FAULT[fault].format(path=path)
    code = expected[1:5]
    if suffix == ".jsonl":  # the stages' reading says the same
        assert raises(code, read_mentions_jsonl, path, None, CONTEXT_CHARS).startswith(expected)
    for chunk_mentions in (1, 2, 3, 4, 100):
        chunks = mention_chunks(path, None, chunk_mentions, CONTEXT_CHARS, False, tmp_path)
        assert raises(code, check_corpus, chunks, path).startswith(expected), chunk_mentions


def test_tac_link_names_the_first_repeated_span_whatever_the_chunk_size(tmp_path: Path) -> None:
    from pipeline.link.sources import check_corpus, mention_chunks

    source = tmp_path / "source"
    source.mkdir()
    (source / "ENG_1.txt").write_text("Barack Obama spoke.", encoding="utf-8")
    spans = ["7-11", "0-5", "13-17", "0-11", "7-11", "7-11"]
    tab = tmp_path / "test.tab"
    tab.write_text(
        "".join(
            f"gold\tM{n}\t{'Barack Obama spoke.'[int(s.split('-')[0]) : int(s.split('-')[1]) + 1]}\t"
            f"ENG_1:{s}\tQ1\tPER\tNAM\t1.0\n"
            for n, s in enumerate(spans, start=1)
        ),
        encoding="utf-8",
    )
    for chunk_mentions in (1, 2, 100):
        chunks = mention_chunks(tab, source, chunk_mentions, CONTEXT_CHARS, False, tmp_path)
        assert raises("E115", check_corpus, chunks, tab).startswith(
            f"[E115] {tab}:5: mention 'M5' covers the same span ENG_1:7-11 as mention 'M1' on line 1;"
        ), chunk_mentions


def test_inline_texts_other_than_the_docs_file_text_are_e120_even_when_every_mention_has_one(tmp_path: Path) -> None:
    import polars as pl

    from pipeline.link.sources import check_corpus, mention_chunks

    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d0", "text": "Other."}, {"doc_id": "d1", "text": TEXT_A}])
    records = [inline("m1", TEXT_B, "Barack Obama"), inline("m2", TEXT_B, "Paris"), inline("m3", TEXT_B, "Obama")]
    path = write_jsonl(tmp_path / "m.jsonl", records)
    expected = f"[E120] {path}:1: mention 'm1' gives document 'd1' a text other than the one {docs}:2 gives it;"
    assert raises("E120", read_mentions_jsonl, path, docs, CONTEXT_CHARS).startswith(expected)
    parquet = tmp_path / "m.parquet"
    pl.DataFrame(records).write_parquet(parquet)
    for mentions in (path, parquet):
        for chunk_mentions in (1, 2, 100):
            work = tmp_path / f"work-{mentions.suffix[1:]}-{chunk_mentions}"
            work.mkdir()
            chunks = mention_chunks(mentions, docs, chunk_mentions, CONTEXT_CHARS, False, work)
            assert raises("E120", check_corpus, chunks, mentions).startswith(expected.replace(str(path), str(mentions)))
    records[0]["text"] = records[1]["text"] = records[2]["text"] = TEXT_A  # the docs file's own text: accepted
    records[1] = inline("m2", TEXT_A, "Berlin")
    assert read_mentions_jsonl(write_jsonl(path, records), docs, CONTEXT_CHARS).height == 3


# --- blank gold ids ----------------------------------------------------------------------------


def test_a_blank_gold_id_is_no_gold_in_the_stages_as_in_link(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import polars as pl

    from pipeline.formats.inputs import check_gold_in_kb, normalise_gold

    records = [
        {**record, "split": "test", "gold_kb_id": gold}
        for record, gold in zip(tagged_records(["en"] * 5), ["", "  ", "\u3000", "\t\n", " Q1 "])
    ]
    frame = normalise_gold(read_mentions_jsonl(write_jsonl(tmp_path / "m.jsonl", records), None, CONTEXT_CHARS))
    # Empty, spaces, an ideographic space, a tab and a line break are no gold (not E116 for the
    # tab); an id with spaces round it stays an id.
    assert frame["gold_kb_id"].to_list() == [None, None, None, None, " Q1 "]
    with caplog.at_level(logging.WARNING):
        assert check_gold_in_kb(frame, pl.LazyFrame({"kb_id": ["Q1"]}), tmp_path / "m.jsonl") == 1
    assert "(e.g. ' Q1 ')" in caplog.text  # quoted, so the spaces show
