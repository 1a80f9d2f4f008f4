"""Reading mentions, docs, KB and TAC inputs: every bad record is named by file, line and code.

Inputs are written inline; the tiny mentions (English, Spanish, Russian) and the
five-entity KB come from conftest.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from conftest import TINY_KB, raises_input_error, tiny_mention_records, write_jsonl
from pipeline.core import schema
from pipeline.core.config import InputsConfig
from pipeline.formats.inputs import load_mentions, read_mentions_jsonl, read_tac_mentions, write_entities

CONTEXT_CHARS = 600


def mention(mention_id: str, text: str, surface: str, **extra) -> dict:
    start = text.index(surface)
    return {
        "id": mention_id,
        "doc_id": f"d-{mention_id}",
        "lang": "en",
        "text": text,
        "start": start,
        "end": start + len(surface),
        "mention": surface,
        **extra,
    }


def read(path: Path, docs: Path | None = None, **kwargs) -> pl.DataFrame:
    return read_mentions_jsonl(path, docs, CONTEXT_CHARS, **kwargs)


def test_tiny_mentions_read_into_the_mentions_schema(tiny_inputs: dict[str, Path]) -> None:
    frame = read(tiny_inputs["mentions"])
    assert frame.height == len(tiny_mention_records())
    for column, dtype in schema.MENTIONS.items():
        if column == "gold_tac_id":
            continue  # added by load_mentions
        assert frame.schema[column] == dtype, column
    russian = frame.filter(pl.col("mention_id") == "ru-1").row(0, named=True)
    assert russian["context"][russian["start"] : russian["end"]] == "Москве"
    assert set(frame["lang"]) == {"en", "es", "ru"}


def test_bad_json_line_is_e101_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mentions.jsonl"
    good = json.dumps(mention("m1", "Paris is big.", "Paris"))
    path.write_text(good + "\n" + '{"id": "m2", "doc_id": \n' + good + "\n", encoding="utf-8")
    message = raises_input_error("E101", read, path)
    assert f"{path}:2:" in message


def test_a_line_that_is_not_an_object_is_e101(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mentions.jsonl", [mention("m1", "Paris is big.", "Paris"), ["a", "list"]])
    assert f"{path}:2:" in raises_input_error("E101", read, path)


def test_missing_required_field_is_e102(tmp_path: Path) -> None:
    record = mention("m1", "Paris is big.", "Paris")
    del record["lang"]
    path = write_jsonl(tmp_path / "mentions.jsonl", [mention("m0", "Rome too.", "Rome"), record])
    message = raises_input_error("E102", read, path)
    assert f"{path}:2:" in message and "'lang'" in message


@pytest.mark.parametrize(("field", "value"), [("start", "0"), ("start", True), ("mention", 5), ("named", "yes")])
def test_wrong_type_is_e103(tmp_path: Path, field: str, value: object) -> None:
    record = {**mention("m1", "Paris is big.", "Paris"), field: value}
    path = write_jsonl(tmp_path / "mentions.jsonl", [record])
    message = raises_input_error("E103", read, path)
    assert f"{path}:1:" in message and f"'{field}'" in message


def test_mention_without_offsets_or_doc_is_e111(tmp_path: Path) -> None:
    record = mention("m1", "Paris is big.", "Paris")
    del record["start"]
    path = write_jsonl(tmp_path / "mentions.jsonl", [record])
    assert f"{path}:1:" in raises_input_error("E111", read, path)


def test_duplicate_mention_id_is_e104_naming_both_lines(tmp_path: Path) -> None:
    text = "Barack Obama met Angela Merkel in Berlin."
    records = [mention("m1", text, "Barack Obama"), mention("m2", text, "Berlin"), mention("m1", text, "Angela Merkel")]
    path = write_jsonl(tmp_path / "mentions.jsonl", records)
    message = raises_input_error("E104", read, path)
    assert f"{path}:3:" in message
    assert "first seen on line 1" in message and "'m1'" in message


def test_rename_duplicate_ids_renames_instead(tmp_path: Path) -> None:
    text = "Barack Obama met Angela Merkel in Berlin."
    records = [mention("m1", text, "Barack Obama"), mention("m2", text, "Berlin"), mention("m1", text, "Angela Merkel")]
    path = write_jsonl(tmp_path / "mentions.jsonl", records)
    frame = read(path, rename_duplicate_ids=True)
    start = text.index("Angela Merkel")
    assert frame["mention_id"].to_list() == ["m1", "m2", f"m1#{start}-{start + len('Angela Merkel')}"]
    assert frame["mention"].to_list() == ["Barack Obama", "Berlin", "Angela Merkel"]


def test_drop_duplicate_spans_keeps_the_first_of_each_span_and_warns_once(tmp_path: Path, caplog) -> None:
    """One span marked twice with two gold ids (as NEREL's training part has) is E115 unless
    inputs.drop_duplicate_spans keeps the first and counts the rest in one W108 (issue 21 item 8)."""
    text = "Barack Obama met Angela Merkel in Berlin."
    records = [
        mention("m1", text, "Barack Obama", gold_kb_id="Q1"),
        mention("m2", text, "Berlin", gold_kb_id="Q4"),
        mention("m3", text, "Barack Obama", gold_kb_id="Q9"),
        mention("m4", text, "Berlin", gold_kb_id="Q4"),
        mention("m5", text, "Angela Merkel", gold_kb_id="Q2"),
    ]
    records = [{**r, "doc_id": "d1"} for r in records]
    path = write_jsonl(tmp_path / "mentions.jsonl", records)
    assert f"{path}:3:" in raises_input_error("E115", read, path)
    with caplog.at_level("WARNING"):
        frame = read(path, drop_duplicate_spans=True)
    assert frame["mention_id"].to_list() == ["m1", "m2", "m5"]
    assert frame["gold_kb_id"].to_list() == ["Q1", "Q4", "Q2"]
    warnings = [r.getMessage() for r in caplog.records if "[W108]" in r.getMessage()]
    assert len(warnings) == 1 and f"{path}: dropped 2 mention(s)" in warnings[0]
    assert (
        "1 of them with another gold id; first on line 3: mention 'm3' (gold 'Q9'; the first has 'Q1') repeats line 1"
        in warnings[0]
    )
    config = InputsConfig(kb=path, mentions=path, drop_duplicate_spans=True)
    assert load_mentions(config)["mention_id"].to_list() == ["m1", "m2", "m5"]


def test_duplicate_kb_id_is_e104(tmp_path: Path) -> None:
    kb = write_jsonl(tmp_path / "kb.jsonl", TINY_KB + [{"kb_id": "Q2", "name": "Angela Dorothea Merkel"}])
    out = tmp_path / "out" / "entities.parquet"
    message = raises_input_error("E104", write_entities, kb, out)
    assert f"{kb}:6:" in message and "first seen on line 2" in message and "'Q2'" in message
    assert not out.exists()  # no half-written table left behind
    assert not list(out.parent.glob("*.tmp"))


def test_kb_streams_into_entities_parquet(tmp_path: Path) -> None:
    kb = write_jsonl(tmp_path / "kb.jsonl", TINY_KB + [{"kb_id": "Q6", "name": "Lionel Messi", "aliases": ["Leo"]}])
    out = tmp_path / "entities.parquet"
    assert write_entities(kb, out) == 6
    entities = pl.read_parquet(out)
    assert dict(entities.schema) == schema.ENTITIES
    aliases = dict(zip(entities["kb_id"], entities["alias_texts"].to_list()))
    assert aliases["Q1"] == ["Барак Обама", "奥巴马"]
    assert aliases["Q6"] == ["Leo"]
    assert entities.filter(pl.col("kb_id") == "Q6")["description"].to_list() == [None]


def test_bad_kb_alias_is_e103(tmp_path: Path) -> None:
    kb = write_jsonl(tmp_path / "kb.jsonl", [{"kb_id": "Q1", "name": "Paris", "aliases": [{"lang": "fr"}]}])
    message = raises_input_error("E103", write_entities, kb, tmp_path / "entities.parquet")
    assert f"{kb}:1:" in message and "aliases" in message


@pytest.mark.parametrize(("start", "end"), [(-1, 4), (5, 99)])
def test_offsets_outside_text_are_e105(tmp_path: Path, start: int, end: int) -> None:
    record = {**mention("m1", "Paris is big.", "Paris"), "start": start, "end": end}
    path = write_jsonl(tmp_path / "mentions.jsonl", [mention("m0", "Rome too.", "Rome"), record])
    message = raises_input_error("E105", read, path)
    assert f"{path}:2:" in message and "'m1'" in message


def test_offsets_not_covering_the_mention_are_e106(tmp_path: Path) -> None:
    record = {**mention("m1", "Москва большая.", "Москва"), "start": 1, "end": 7}
    path = write_jsonl(tmp_path / "mentions.jsonl", [record])
    message = raises_input_error("E106", read, path)
    assert f"{path}:1:" in message and "'Москва'" in message and "'осква '" in message


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_is_e107(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mentions.jsonl"
    path.write_bytes(content)
    assert str(path) in raises_input_error("E107", read, path)


def test_missing_file_is_e108(tmp_path: Path) -> None:
    assert "nope.jsonl" in raises_input_error("E108", read, tmp_path / "nope.jsonl")


def test_mention_of_unknown_doc_is_e109(tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d1", "lang": "en", "text": "Paris is big."}])
    records = [
        {"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Paris", "doc_start": 0, "doc_end": 5},
        {"id": "m2", "doc_id": "d9", "lang": "en", "mention": "Rome", "doc_start": 0, "doc_end": 4},
    ]
    path = write_jsonl(tmp_path / "mentions.jsonl", records)
    message = raises_input_error("E109", read, path, docs)
    assert f"{path}:2:" in message and "'d9'" in message and str(docs) in message


def test_doc_offsets_outside_the_doc_are_e105(tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d1", "text": "Paris is big."}])
    path = write_jsonl(
        tmp_path / "mentions.jsonl",
        [{"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Paris", "doc_start": 10, "doc_end": 15}],
    )
    assert f"{path}:1:" in raises_input_error("E105", read, path, docs)


def test_duplicate_doc_id_is_e104(tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": "d1", "text": "Paris."}, {"doc_id": "d1", "text": "Rome."}])
    path = write_jsonl(
        tmp_path / "mentions.jsonl",
        [{"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Paris", "doc_start": 0, "doc_end": 5}],
    )
    assert f"{docs}:2:" in raises_input_error("E104", read, path, docs)


def test_non_utf8_bytes_are_e110(tmp_path: Path) -> None:
    path = tmp_path / "mentions.jsonl"
    good = json.dumps(mention("m1", "Paris is big.", "Paris")).encode()
    bad = json.dumps(mention("m2", "Par-s is big.", "Par-s")).encode().replace(b"Par-s", b"Par\xeds")
    path.write_bytes(good + b"\n" + bad + b"\n")
    message = raises_input_error("E110", read, path)
    assert f"{path}:2:" in message


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    records = tiny_mention_records()
    path = tmp_path / "mentions.jsonl"
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    frame = read(path)
    assert frame["mention_id"].to_list() == [r["id"] for r in records]
    assert frame["mention"].to_list() == [r["mention"] for r in records]


def test_doc_offsets_give_a_context_window_with_local_offsets(tmp_path: Path) -> None:
    filler_before = "Lorem ipsum dolor sit amet. " * 8  # 224 characters
    filler_after = " Sed do eiusmod tempor incididunt." * 8
    doc_text = filler_before + "Барак Обама прибыл в Париж." + filler_after
    doc_start = doc_text.index("Париж")
    doc_end = doc_start + len("Париж")
    docs = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"doc_id": "ru-doc", "lang": "ru", "text": doc_text},
            {"doc_id": "short", "lang": "en", "text": "Paris is big."},
        ],
    )
    records = [
        {
            "id": "far",
            "doc_id": "ru-doc",
            "lang": "ru",
            "mention": "Париж",
            "doc_start": doc_start,
            "doc_end": doc_end,
            "gold_kb_id": "Q4",
            "split": "dev",
        },
        {"id": "near", "doc_id": "short", "lang": "en", "mention": "Paris", "doc_start": 0, "doc_end": 5},
        {**mention("own", "Rome too.", "Rome")},  # a mention with its own text is left alone
    ]
    path = write_jsonl(tmp_path / "mentions.jsonl", records)
    frame = read_mentions_jsonl(path, docs, 50)
    rows = {row["mention_id"]: row for row in frame.iter_rows(named=True)}

    far = rows["far"]
    assert far["context"] == doc_text[doc_start - 50 : doc_end + 50]
    assert (far["start"], far["end"]) == (50, 55)
    assert far["context"][far["start"] : far["end"]] == "Париж"
    assert (far["doc_start"], far["doc_end"]) == (doc_start, doc_end)
    assert far["split"] == "dev"

    near = rows["near"]  # window clipped at the start of the document
    assert near["context"] == "Paris is big."
    assert (near["start"], near["end"], near["doc_start"], near["doc_end"]) == (0, 5, 0, 5)
    assert rows["own"]["context"] == "Rome too." and rows["own"]["split"] == "test"  # default split


def test_load_mentions_maps_nil_cluster_ids_and_named_only(tmp_path: Path) -> None:
    text = "Barack Obama met Klara Dvorakova in Berlin."
    records = [
        mention("m1", text, "Barack Obama", gold_kb_id="Q1", named=True),
        mention("m2", text, "Klara Dvorakova", gold_kb_id="NIL0007", named=True),
        mention("m3", text, "met", gold_kb_id="NIL", named=False),
        mention("m4", text, "Berlin"),
    ]
    path = write_jsonl(tmp_path / "mentions.jsonl", records)
    kb = write_jsonl(tmp_path / "kb.jsonl", TINY_KB)
    frame = load_mentions(InputsConfig(kb=kb, mentions=path, named_only=True))
    rows = {row["mention_id"]: row for row in frame.iter_rows(named=True)}
    assert set(rows) == {"m1", "m2", "m4"}  # unmarked mentions count as named
    assert (rows["m2"]["gold_kb_id"], rows["m2"]["gold_tac_id"]) == ("NIL", "NIL0007")
    assert (rows["m1"]["gold_kb_id"], rows["m1"]["gold_tac_id"]) == ("Q1", "Q1")
    assert rows["m4"]["gold_kb_id"] is None


# --- TAC KBP 2015 EDL: gold .tab + raw source files ---------------------------------------

TAC_SOURCES = {
    "ENG_NW_0001": '<doc id="ENG_NW_0001">\n<headline>Obama in Paris</headline>\n<text>\n'
    "Barack Obama arrived in Paris on Monday.\n</text>\n</doc>\n",
    "CMN_NW_0001": '<doc id="CMN_NW_0001">\n<text>\n奥巴马周一抵达巴黎。\n</text>\n</doc>\n',
    "SPA_NW_0001": '<doc id="SPA_NW_0001">\n<text>\nLas Naciones Unidas abrieron su cumbre.\n</text>\n</doc>\n',
}


def tac_line(
    mention_id: str,
    doc_id: str,
    surface: str,
    kb_id: str,
    entity_type: str = "PER",
    mention_type: str = "NAM",
    occurrence: int = 0,
) -> str:
    raw = TAC_SOURCES[doc_id]
    start = -1
    for _ in range(occurrence + 1):
        start = raw.index(surface, start + 1)
    end_inclusive = start + len(surface) - 1
    return "\t".join(
        ["gold", mention_id, surface, f"{doc_id}:{start}-{end_inclusive}", kb_id, entity_type, mention_type, "1.0"]
    )


@pytest.fixture
def tac_files(tmp_path: Path) -> dict[str, Path]:
    source = tmp_path / "source"
    source.mkdir()
    for doc_id, raw in TAC_SOURCES.items():
        (source / f"{doc_id}.xml").write_text(raw, encoding="utf-8")
    train = tmp_path / "train.tab"
    train.write_text(
        "\n".join(
            [
                # "Obama" occurs first inside the <headline> tag's text: offsets count the XML.
                tac_line("EDL_1", "ENG_NW_0001", "Obama", "Q1"),
                tac_line("EDL_2", "ENG_NW_0001", "Barack Obama", "Q1"),
                tac_line("EDL_3", "ENG_NW_0001", "Paris", "Q4", "GPE", occurrence=1),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    test = tmp_path / "test.tab"
    test.write_text(
        "\n".join(
            [
                tac_line("EDL_4", "CMN_NW_0001", "奥巴马", "Q1"),
                tac_line("EDL_5", "SPA_NW_0001", "Naciones Unidas", "NIL0003", "ORG"),
                tac_line("EDL_6", "CMN_NW_0001", "巴黎", "Q4", "GPE", "NOM"),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return {"source": source, "train": train, "test": test}


def test_drop_duplicate_spans_in_a_tac_file(tac_files: dict[str, Path], caplog) -> None:
    tab = tac_files["train"]
    tab.write_text(
        tab.read_text(encoding="utf-8") + tac_line("EDL_9", "ENG_NW_0001", "Barack Obama", "Q7") + "\n",
        encoding="utf-8",
    )
    assert f"{tab}:4:" in raises_input_error("E115", read_tac_mentions, {"train": tab}, tac_files["source"], 60)
    with caplog.at_level("WARNING"):
        frame = read_tac_mentions(
            {"train": tab, "test": tac_files["test"]}, tac_files["source"], 60, drop_duplicate_spans=True
        )
    assert frame["mention_id"].to_list() == [f"EDL_{i}" for i in range(1, 7)]
    assert [r.getMessage() for r in caplog.records if "[W108]" in r.getMessage()] == [
        f"[W108] {tab}: dropped 1 mention(s) covering the span of an earlier one (1 of them with another gold id; first "
        "on line 4: mention 'EDL_9' (gold 'Q7'; the first has 'Q1') repeats line 2), keeping the first of each span "
        "(inputs.drop_duplicate_spans)"
    ]


def test_tac_reader_counts_raw_characters_end_inclusive(tac_files: dict[str, Path]) -> None:
    frame = read_tac_mentions({"train": tac_files["train"], "test": tac_files["test"]}, tac_files["source"], 60)
    rows = {row["mention_id"]: row for row in frame.iter_rows(named=True)}
    assert set(rows) == {f"EDL_{i}" for i in range(1, 7)}
    for row in rows.values():
        raw = TAC_SOURCES[row["doc_id"]]
        assert raw[row["doc_start"] : row["doc_end"]] == row["mention"]  # doc_end is exclusive here
        assert row["context"][row["start"] : row["end"]] == row["mention"]
    headline = rows["EDL_1"]
    assert headline["doc_start"] == TAC_SOURCES["ENG_NW_0001"].index("Obama")  # inside <headline>
    assert "<headline>" in headline["context"]
    assert rows["EDL_3"]["doc_start"] == TAC_SOURCES["ENG_NW_0001"].index("Paris on")
    assert {row["mention_id"]: row["lang"] for row in rows.values()} == {
        "EDL_1": "en",
        "EDL_2": "en",
        "EDL_3": "en",
        "EDL_4": "zh",
        "EDL_5": "es",
        "EDL_6": "zh",
    }
    assert {row["mention_id"]: row["split"] for row in rows.values()} == {
        "EDL_1": "train",
        "EDL_2": "train",
        "EDL_3": "train",
        "EDL_4": "test",
        "EDL_5": "test",
        "EDL_6": "test",
    }
    assert rows["EDL_6"]["named"] is False and rows["EDL_4"]["named"] is True
    assert rows["EDL_5"]["gold_kb_id"] == "NIL0003"  # raw here; load_mentions maps NIL clusters


def test_tac_inputs_through_load_mentions(tac_files: dict[str, Path], tmp_path: Path) -> None:
    kb = write_jsonl(tmp_path / "kb.jsonl", TINY_KB)
    config = InputsConfig(
        kb=kb, tac_train=tac_files["train"], tac_test=tac_files["test"], tac_source=tac_files["source"]
    )
    frame = load_mentions(config).sort("mention_id")
    assert frame.filter(pl.col("mention_id") == "EDL_5").select("gold_kb_id", "gold_tac_id").row(0) == (
        "NIL",
        "NIL0003",
    )
    assert frame.height == 6


def test_tac_offsets_that_miss_the_mention_are_e106(tac_files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.tab"
    line = tac_line("EDL_9", "ENG_NW_0001", "Barack Obama", "Q1").replace("Barack Obama\t", "Barack Obam\t", 1)
    bad.write_text(line + "\n", encoding="utf-8")
    message = raises_input_error("E106", read_tac_mentions, {"dev": bad}, tac_files["source"], 60)
    assert f"{bad}:1:" in message


def test_tac_offsets_past_the_document_end_name_the_document_length(tmp_path: Path) -> None:
    """Checked on the whole source document, not on the context window cut from it."""
    source = tmp_path / "source"
    source.mkdir()
    raw = "x" * 1000 + "Barack Obama spoke." + "y" * 1000
    (source / "ENG_1.txt").write_text(raw, encoding="utf-8")
    tab = tmp_path / "dev.tab"
    tab.write_text("gold\tM1\tObama\tENG_1:1007-3500\tQ1\tPER\tNAM\t1.0\n", encoding="utf-8")
    message = raises_input_error("E105", read_tac_mentions, {"dev": tab}, source, 60)
    assert f"{tab}:1: offsets 1007-3500 fall outside the text (length {len(raw)})" in message


def test_tac_missing_source_document_is_e108(tac_files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.tab"
    bad.write_text("gold\tEDL_9\tObama\tENG_NW_0404:3-7\tQ1\tPER\tNAM\t1.0\n", encoding="utf-8")
    assert "ENG_NW_0404" in raises_input_error("E108", read_tac_mentions, {"dev": bad}, tac_files["source"], 60)


def test_tac_doc_id_with_colons_maps_to_double_underscore_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    raw = "<DOC>\nLe président Obama à Paris.\n</DOC>\n"
    (source / "meantime__fr__42.txt").write_text(raw, encoding="utf-8")
    start = raw.index("Obama")
    tab = tmp_path / "dev.tab"
    tab.write_text(f"gold\tM1\tObama\tmeantime:fr:42:{start}-{start + 4}\tQ1\tPER\tNAM\n", encoding="utf-8")
    frame = read_tac_mentions({"dev": tab}, source, 60)
    row = frame.row(0, named=True)
    assert (row["doc_id"], row["lang"], row["mention"]) == ("meantime:fr:42", "fr", "Obama")


# --- the same checks through the CLI ----------------------------------------------------------


def test_triage_command_reports_input_error_with_code_and_file(make_run_config, tiny_inputs: dict[str, Path]) -> None:
    records = tiny_mention_records()
    records[3] = {**records[3], "start": records[3]["start"] + 1}
    write_jsonl(tiny_inputs["mentions"], records)
    result = CliRunner().invoke(main, ["triage", "--config", str(make_run_config())])
    assert result.exit_code == 2
    assert f"Error: [E106] {tiny_inputs['mentions']}:4:" in result.output
    assert "Traceback" not in result.output


def test_triage_command_with_docs_file_and_renamed_duplicates(make_run_config, tmp_path: Path) -> None:
    doc_text = "Barack Obama met Angela Merkel in Berlin on Monday. " * 3
    docs = write_jsonl(tmp_path / "data" / "docs.jsonl", [{"doc_id": "d1", "lang": "en", "text": doc_text}])
    records = [
        {
            "id": "m1",
            "doc_id": "d1",
            "lang": "en",
            "mention": "Barack Obama",
            "doc_start": 0,
            "doc_end": 12,
            "gold_kb_id": "Q1",
            "split": "train",
        },
        {
            "id": "m1",
            "doc_id": "d1",
            "lang": "en",
            "mention": "Angela Merkel",
            "doc_start": 17,
            "doc_end": 30,
            "gold_kb_id": "Q2",
            "split": "test",
        },
    ]
    mentions = write_jsonl(tmp_path / "data" / "mentions2.jsonl", records)
    config = make_run_config(
        inputs={"mentions": mentions, "docs": docs, "rename_duplicate_ids": True, "context_chars": 50}
    )
    result = CliRunner().invoke(main, ["triage", "--config", str(config)])
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(tmp_path / "run" / "triage" / "mentions.parquet")
    assert table["mention_id"].to_list() == ["m1", "m1#17-30"]
    assert table["context"].to_list() == [doc_text[:62], doc_text[0:80]]


def test_ignore_entity_type_reads_no_mention_types(tac_files: dict[str, Path], tmp_path: Path) -> None:
    """A .tab's type column is each mention's entity_type, as JSONL's field is; inputs.ignore_entity_type
    reads none from either (issue 21 item 15)."""
    kb = write_jsonl(tmp_path / "kb.jsonl", TINY_KB)
    tac = {"kb": kb, "tac_train": tac_files["train"], "tac_source": tac_files["source"]}
    assert load_mentions(InputsConfig(**tac))["entity_type"].to_list() == ["PER", "PER", "GPE"]
    assert load_mentions(InputsConfig(**tac, ignore_entity_type=True))["entity_type"].null_count() == 3
    jsonl = write_jsonl(tmp_path / "m.jsonl", [mention("m1", "Paris is big.", "Paris", entity_type="GPE")])
    assert load_mentions(InputsConfig(kb=kb, mentions=jsonl))["entity_type"].to_list() == ["GPE"]
    assert load_mentions(InputsConfig(kb=kb, mentions=jsonl, ignore_entity_type=True))["entity_type"].to_list() == [
        None
    ]
