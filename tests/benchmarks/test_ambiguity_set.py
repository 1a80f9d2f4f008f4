"""bench/data/ambiguity (the ambiguity set) is well formed as xel reads it, and bench/ambiguity.py's figures.

The set's files are read through xel's own readers (`read_mentions_jsonl` with the docs file,
`write_entities` for the KB), so what is checked is what a run sees.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import unicodedata
from pathlib import Path

import polars as pl
import pytest

from pipeline.core import schema
from pipeline.formats.inputs import gold_missing_from_kb, read_mentions_jsonl, write_entities

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "bench" / "data" / "ambiguity"


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_script("ambiguity_build", DATA / "build.py")
bench = load_script("ambiguity_bench", ROOT / "bench" / "ambiguity.py")


@pytest.fixture(scope="module")
def mentions() -> pl.DataFrame:
    """The set's mentions as xel reads them, with each one's `sense` (which xel does not read) joined by id."""
    table = read_mentions_jsonl(DATA / "mentions.jsonl", DATA / "docs.jsonl", context_chars=600)
    raw = [json.loads(line) for line in (DATA / "mentions.jsonl").read_text(encoding="utf-8").splitlines()]
    senses = pl.DataFrame({"mention_id": [r["id"] for r in raw], "sense": [r["sense"] for r in raw]})
    return table.join(senses, on="mention_id", how="left")


@pytest.fixture(scope="module")
def entities(tmp_path_factory) -> pl.DataFrame:
    path = tmp_path_factory.mktemp("kb") / "entities.parquet"
    write_entities(DATA / "kb.jsonl", path)
    return pl.read_parquet(path)


def test_the_jsonl_files_are_built_from_the_sentences() -> None:
    kb_ids = {json.loads(line)["kb_id"] for line in (DATA / "kb.jsonl").read_text(encoding="utf-8").splitlines()}
    items = [item for lang in build.LANGUAGES for item in build.parse(DATA / "sentences" / f"{lang}.txt", lang, kb_ids)]
    docs, mention_records = build.records(items)
    assert (DATA / "docs.jsonl").read_text(encoding="utf-8") == build.jsonl(docs)
    assert (DATA / "mentions.jsonl").read_text(encoding="utf-8") == build.jsonl(mention_records)


def test_every_gold_is_a_kb_entity_or_nil_and_every_entity_is_some_gold(mentions, entities) -> None:
    missing, carried_by, _ = gold_missing_from_kb(mentions, entities.lazy())
    assert missing.len() == 0 and carried_by == 0
    assert mentions["gold_kb_id"].null_count() == 0
    linked = set(mentions.filter(pl.col("gold_kb_id") != schema.NIL_ID)["gold_kb_id"].to_list())
    assert linked == set(entities["kb_id"].to_list())
    # A NIL mention's sense says what it names; a linked one's is its gold.
    nil = mentions.filter(pl.col("gold_kb_id") == schema.NIL_ID)
    assert nil["sense"].str.starts_with(build.NIL_PREFIX).all()
    assert (
        (mentions.filter(pl.col("gold_kb_id") != schema.NIL_ID).select(pl.col("sense") == pl.col("gold_kb_id")))
        .to_series()
        .all()
    )


def test_every_sense_has_train_dev_and_test_mentions_in_every_language(mentions) -> None:
    splits = mentions.group_by("sense", "lang").agg(pl.col("split").unique().sort())
    assert splits["split"].to_list() == [["dev", "test", "train"]] * splits.height
    assert splits.height == mentions["sense"].n_unique() * mentions["lang"].n_unique()
    assert mentions.filter(pl.col("gold_kb_id") == schema.NIL_ID)["sense"].n_unique() >= 5


def test_four_languages_one_of_them_in_a_non_latin_script(mentions) -> None:
    assert set(mentions["lang"].unique().to_list()) >= {"en", "es", "ru", "zh"}

    def scripts(text: str) -> set[str]:
        return {unicodedata.name(char).split()[0] for char in text if char.isalpha()}

    by_language = {
        lang: set().union(*map(scripts, group["mention"].to_list())) for (lang,), group in mentions.group_by("lang")
    }
    assert "CYRILLIC" in by_language["ru"] and "CJK" in by_language["zh"]


def test_names_are_ambiguous_and_no_sentence_is_in_two_splits(mentions) -> None:
    for (lang,), group in mentions.group_by("lang"):
        senses = collections.defaultdict(set)
        for mention, sense in group.select(pl.col("mention").str.to_lowercase(), "sense").iter_rows():
            senses[mention].add(sense)
        # Written forms naming two or more senses: 16 in en, 14 es, 25 ru (inflected forms), 11 zh.
        assert sum(len(named) > 1 for named in senses.values()) >= 10, lang
    texts = mentions.group_by("context").agg(pl.col("split").n_unique().alias("splits"))
    assert texts["splits"].max() == 1


def test_the_ranker_method_is_dev_s_best_of_the_ranker_s_own() -> None:
    metrics = {
        "nil_validation": [
            {"method": "threshold", "lang": "all", "micro_average": 0.70},
            {"method": "classifier", "lang": "all", "micro_average": 0.75},
            {"method": "classifier", "lang": "en", "micro_average": 0.99},
            {"method": "reader", "lang": "all", "micro_average": 0.90},
        ]
    }
    assert bench.ranker_method(metrics) == "classifier"
    # A tie goes to the later method, as evaluate's auto does; no validation leaves thresholds.
    metrics["nil_validation"][0]["micro_average"] = 0.75
    assert bench.ranker_method(metrics) == "classifier"
    assert bench.ranker_method({"nil_validation": []}) == "threshold"
    # The classifier reads the mention NIL prior only when that variant is strictly better.
    metrics["nil_validation"].append({"method": "classifier+prior", "lang": "all", "micro_average": 0.75})
    assert bench.ranker_method(metrics) == "classifier"
    metrics["nil_validation"][-1]["micro_average"] = 0.76
    assert bench.ranker_method(metrics) == "classifier+prior"


def test_first_candidate_accuracy_counts_linked_test_mentions_only(tmp_path: Path) -> None:
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "triage").mkdir()
    pl.DataFrame(
        {
            "mention_id": ["m1", "m2", "m3", "m4", "m5"],
            "lang": ["en", "en", "ru", "ru", "ru"],
            "split": ["test", "test", "test", "test", "dev"],
            "gold_kb_id": ["A", "B", "A", "NIL", "A"],
            "best_kb_id": ["A", "A", "B", "A", "A"],
            "reader_kb_id": ["A", "B", None, "A", "A"],
        }
    ).write_parquet(tmp_path / "evaluate" / "predictions.parquet")
    pl.DataFrame(
        {"mention_id": ["m1", "m1", "m2", "m3"], "rank": [1, 2, 1, 1], "kb_id": ["B", "A", "B", "A"]}
    ).write_parquet(tmp_path / "triage" / "candidates.parquet")
    table = {row["lang"]: row for row in bench.first_candidate_accuracy(tmp_path, "test").iter_rows(named=True)}
    # en: m1 (triage B, ranker A, reader A; gold A), m2 (B, A, B; gold B). ru: m3 only (A, B, none; gold A).
    assert table["en"] == {"lang": "en", "linked": 2, "triage": 0.5, "ranker": 0.5, "reader": 1.0}
    assert table["ru"] == {"lang": "ru", "linked": 1, "triage": 1.0, "ranker": 0.0, "reader": 0.0}
    assert table["all"]["linked"] == 3 and table["all"]["reader"] == pytest.approx(2 / 3)
