"""Triage: candidate sources, oracle, outside candidates, recall@k and the candidates table.

Each test writes a handful of mentions and runs the real triage stage on them with only
the candidate source under test switched on, so a candidate's `sources` says who found it.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from conftest import TINY_KB, write_jsonl
from pipeline.core import schema
from pipeline.core.config_file import load_config
from pipeline.core.errors import InputError
from pipeline.core.manifest import read_manifest
from pipeline.core.store import kb_index_root
from pipeline.triage.stage import recall_report, run

NO_SOURCES = {"use_priors": False, "use_kb_names": False, "use_fuzzy": False, "use_dense": False}
ONLY_PRIORS = {**NO_SOURCES, "use_priors": True}
ONLY_KB_NAMES = {**NO_SOURCES, "use_kb_names": True}
ONLY_FUZZY = {**NO_SOURCES, "use_fuzzy": True}
ONLY_DENSE = {**NO_SOURCES, "use_dense": True}


def record(mention_id: str, surface: str, gold: str | None, split: str, lang: str = "en") -> dict:
    text = f"Yesterday {surface} was in the news."
    out = {
        "id": mention_id,
        "doc_id": f"doc-{mention_id}",
        "lang": lang,
        "text": text,
        "start": 10,
        "end": 10 + len(surface),
        "mention": surface,
        "split": split,
    }
    if gold is not None:
        out["gold_kb_id"] = gold
    return out


@pytest.fixture
def triage(make_run_config, tmp_path: Path):
    """Run triage on the given mentions (and KB) with the given triage settings; returns candidates."""

    def run_triage(records: list[dict], kb: list[dict] = TINY_KB, inputs: dict | None = None, **settings):
        mentions_path = write_jsonl(tmp_path / "data" / "triage_mentions.jsonl", records)
        kb_path = write_jsonl(tmp_path / "data" / "triage_kb.jsonl", kb)
        config = load_config(
            make_run_config(
                inputs={"mentions": mentions_path, "kb": kb_path, **(inputs or {})}, triage={"k": 4, **settings}
            )
        )
        result = run(config, force=True)
        return pl.read_parquet(result.out_dir / "candidates.parquet"), result

    return run_triage


def index_root_of(result) -> Path:
    """The store folder of the KB indexes a triage result used (`pipeline.core.store`)."""
    return kb_index_root(read_manifest(result.out_dir)["inputs"]["kb"])


def by_mention(candidates: pl.DataFrame) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for row in candidates.sort("mention_id", "rank").iter_rows(named=True):
        out.setdefault(row["mention_id"], []).append((row["kb_id"], row["score"], tuple(row["sources"])))
    return out


def test_priors_come_only_from_the_train_split(triage) -> None:
    records = [
        record("t1", "POTUS", "Q1", "train"),
        record("t2", "POTUS", "Q1", "train"),
        record("t3", "potus", "Q2", "train"),  # folded to the same key
        record("d1", "Chancellor", "Q2", "dev"),  # a dev string must not create a prior
        record("x1", "POTUS", None, "test"),
        record("x2", "Chancellor", "Q2", "test"),
    ]
    candidates, _ = triage(records, **ONLY_PRIORS)
    found = by_mention(candidates)
    assert [(kb, pytest.approx(score), src) for kb, score, src in found["x1"]] == [
        ("Q1", pytest.approx(2 / 3), ("prior",)),
        ("Q2", pytest.approx(1 / 3), ("prior",)),
    ]
    assert "x2" not in found and "d1" not in found


def test_kb_name_source_matches_folded_and_romanised_names(triage) -> None:
    kb = TINY_KB + [{"kb_id": "Q6", "name": "Sankt-Peterburg", "type": "LOC"}]
    records = [
        record("accents", "PARÍS", "Q4", "test", "es"),  # case and accent folded: "paris"
        record("cyrillic", "Москва", "Q3", "test", "ru"),  # folded match with the alias Москва
        record("latin", "Moskva", "Q3", "test", "en"),  # unidecode("Москва") == "Moskva"
        record("cross", "Санкт-Петербург", "Q6", "test", "ru"),  # -> "sankt peterburg" == roman of the KB name
        record("alias", "Naciones Unidas", "Q5", "test", "es"),
        record("none", "Bamako", "NIL", "test"),
    ]
    candidates, _ = triage(records, kb=kb, **ONLY_KB_NAMES)
    found = by_mention(candidates)
    assert found["accents"] == [("Q4", 1.0, ("kb_name",))]
    assert found["cyrillic"] == [("Q3", 1.0, ("kb_name",))]
    assert found["latin"] == [("Q3", 1.0, ("kb_name",))]
    assert found["cross"] == [("Q6", 1.0, ("kb_name",))]
    assert found["alias"] == [("Q5", 1.0, ("kb_name",))]
    assert "none" not in found


def test_fuzzy_source_finds_a_misspelt_name(triage) -> None:
    kb = [{**entity, "aliases": []} for entity in TINY_KB]  # no Cyrillic alias that romanises to "barak obama"
    candidates, _ = triage(
        [record("m1", "Barak Obama", "Q1", "test"), record("m2", "Angela Merkle", "Q2", "test")], kb=kb, **ONLY_FUZZY
    )
    found = by_mention(candidates)
    top_id, top_score, top_sources = found["m1"][0]
    assert top_id == "Q1" and top_sources == ("fuzzy",)
    assert 0.9 < top_score < 1.0
    assert all(score >= 0.7 for _, score, _ in found["m1"])  # fuzzy_min_score = 70
    assert found["m2"][0][0] == "Q2"


def test_fuzzy_source_reaches_training_surface_forms(triage) -> None:
    records = [record("t1", "Mutti Merkel", "Q2", "train"), record("x1", "Mutti Merkell", "Q2", "test")]
    candidates, _ = triage(records, **ONLY_FUZZY)
    assert by_mention(candidates)["x1"][0][0] == "Q2"


def test_sources_add_up_and_are_recorded(triage) -> None:
    records = [record("t1", "Paris", "Q4", "train"), record("x1", "Paris", "Q4", "test")]
    candidates, _ = triage(records, use_dense=False)
    top = by_mention(candidates)["x1"][0]
    assert top[0] == "Q4" and top[2] == ("fuzzy", "kb_name", "prior")
    assert top[1] == pytest.approx(3.0)


def test_dense_source_runs_the_encoder_on_names(triage) -> None:
    # The tiny encoder is random, so only the plumbing is checked: scores in [0, 1], at most
    # dense_k KB entities per mention, each recorded as "dense".
    records = [record("x1", "奥巴马", "Q1", "test", "zh"), record("x2", "Paris", "Q4", "test")]
    candidates, _ = triage(records, dense_k=2, dense_floor=-1.0, dense_prefix="", **ONLY_DENSE)
    assert set(candidates["mention_id"]) == {"x1", "x2"}
    assert candidates["sources"].to_list() == [["dense"]] * candidates.height
    assert candidates["score"].is_between(0, 1).all()
    assert candidates.group_by("mention_id").len()["len"].max() <= 2
    # The exact KB name is its own nearest neighbour.
    assert by_mention(candidates)["x2"][0][:2] == ("Q4", pytest.approx(1.0, abs=1e-5))


def test_oracle_adds_the_missing_gold_and_keeps_k(triage) -> None:
    records = [
        record("full", "Paris", "Q3", "test"),  # kb_name finds Q4 only; the gold is Q3
        record("empty", "Bamako", "Q5", "test"),  # no candidate at all
        record("found", "Paris", "Q4", "test"),  # gold already there: nothing added
        record("nil", "Bamako", "NIL", "test"),  # NIL gold: nothing added
    ]
    candidates, _ = triage(records, k=1, oracle=True, **ONLY_KB_NAMES)
    found = by_mention(candidates)
    assert found["full"] == [("Q3", 0.0, ("oracle",))]  # the gold took the last (only) place
    assert found["empty"] == [("Q5", 0.0, ("oracle",))]
    assert found["found"] == [("Q4", 1.0, ("kb_name",))]
    assert "nil" not in found
    assert candidates.group_by("mention_id").len()["len"].max() <= 1
    assert candidates.filter(pl.col("mention_id") != "nil")["is_gold"].all()

    wider, _ = triage(records, k=3, oracle=True, **ONLY_KB_NAMES)
    assert by_mention(wider)["full"] == [("Q4", 1.0, ("kb_name",)), ("Q3", 0.0, ("oracle",))]
    assert wider.filter(pl.col("mention_id") == "full")["rank"].to_list() == [1, 2]


def test_without_oracle_a_missed_gold_stays_missed(triage) -> None:
    candidates, _ = triage([record("full", "Paris", "Q3", "test")], **ONLY_KB_NAMES)
    assert by_mention(candidates)["full"] == [("Q4", 1.0, ("kb_name",))]
    assert candidates["is_gold"].to_list() == [False]


def test_external_candidates_are_merged(triage, tmp_path: Path) -> None:
    external = tmp_path / "data" / "external.csv"
    external.write_text(
        "mention_id,kb_id,score\nx1,Q5,0.4\nx1,Q4,0.25\nx2,Q1,1.5\nghost,Q1,0.3\nx2,Q404,0.9\n", encoding="utf-8"
    )
    records = [record("x1", "Paris", "Q4", "test"), record("x2", "Bamako", "NIL", "test")]
    candidates, result = triage(records, inputs={"candidates": external}, **ONLY_KB_NAMES)
    found = by_mention(candidates)
    assert found["x1"] == [
        ("Q4", pytest.approx(1.25), ("external", "kb_name")),
        ("Q5", pytest.approx(0.4), ("external",)),
    ]
    assert found["x2"] == [("Q1", 1.0, ("external",))]  # score clipped to [0, 1]; Q404 is not in the KB
    assert "ghost" not in found
    assert candidates.filter(pl.col("mention_id") == "x2")["is_gold"].to_list() == [False]


def test_external_candidates_as_tsv(triage, tmp_path: Path) -> None:
    external = tmp_path / "data" / "external.tsv"
    external.write_text("mention_id\tkb_id\tscore\nx1\tQ5\t0.5\n", encoding="utf-8")
    candidates, _ = triage([record("x1", "Bamako", "NIL", "test")], inputs={"candidates": external}, **ONLY_KB_NAMES)
    assert by_mention(candidates)["x1"] == [("Q5", 0.5, ("external",))]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("mention_id,kb_id\nx1,Q5\n", ":1:"),  # no score column
        ("mention_id,kb_id,score\nx1,Q5,0.5\nx1,Q4,high\n", ":3:"),  # non-numeric score
        ("mention_id,kb_id,score\nx1,,0.5\n", ":2:"),  # empty KB id
    ],
)
def test_malformed_external_candidates_name_the_file(triage, tmp_path: Path, content: str, where: str) -> None:
    external = tmp_path / "data" / "external.csv"
    external.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match="E112") as caught:
        triage([record("x1", "Paris", "Q4", "test")], inputs={"candidates": external}, **ONLY_KB_NAMES)
    assert f"{external}{where}" in caught.value.format_message()


def test_recall_report_on_a_hand_computed_case() -> None:
    mentions = pl.DataFrame(
        {
            "mention_id": ["a", "b", "c", "d", "e", "f"],
            "lang": ["en", "en", "en", "en", "ru", "ru"],
            "split": ["test", "test", "test", "test", "test", "dev"],
            "gold_kb_id": ["Q1", "Q2", "Q3", "NIL", "Q4", None],
        }
    )
    # a: gold at rank 1; b: gold at rank 3; c: gold missing; d: NIL; e: gold at rank 2; f: no gold (left out).
    rows = [
        ("a", 1, "Q1", True),
        ("a", 2, "Q2", False),
        ("b", 1, "Q1", False),
        ("b", 2, "Q5", False),
        ("b", 3, "Q2", True),
        ("c", 1, "Q1", False),
        ("d", 1, "Q1", False),
        ("e", 1, "Q1", False),
        ("e", 2, "Q4", True),
        ("f", 1, "Q1", None),
    ]
    candidates = pl.DataFrame(
        rows,
        schema={"mention_id": pl.String, "rank": pl.Int32, "kb_id": pl.String, "is_gold": pl.Boolean},
        orient="row",
    )
    report = recall_report(mentions, candidates, k=3)
    assert report.columns == [
        "lang",
        "split",
        "mentions",
        "nil_share",
        "candidates_per_mention",
        "recall@1",
        "recall@3",
    ]
    rows_by_group = {(row["lang"], row["split"]): row for row in report.iter_rows(named=True)}
    assert set(rows_by_group) == {("en", "test"), ("ru", "test"), ("all", "all")}
    english = rows_by_group[("en", "test")]
    assert english["mentions"] == 4
    assert english["nil_share"] == pytest.approx(0.25)
    assert english["candidates_per_mention"] == pytest.approx((2 + 3 + 1 + 1) / 4)
    assert english["recall@1"] == pytest.approx(1 / 3)
    assert english["recall@3"] == pytest.approx(2 / 3)
    russian = rows_by_group[("ru", "test")]
    assert (russian["recall@1"], russian["recall@3"]) == (0.0, 1.0)
    overall = rows_by_group[("all", "all")]
    assert overall["mentions"] == 5
    assert overall["recall@1"] == pytest.approx(1 / 4)
    assert overall["recall@3"] == pytest.approx(3 / 4)


def test_recall_levels_include_k_and_stop_at_k() -> None:
    mentions = pl.DataFrame({"mention_id": ["a"], "lang": ["en"], "split": ["test"], "gold_kb_id": ["Q1"]})
    candidates = pl.DataFrame(
        {"mention_id": ["a"], "rank": [1], "kb_id": ["Q1"], "is_gold": [True]}, schema_overrides={"rank": pl.Int32}
    )
    assert [c for c in recall_report(mentions, candidates, k=30).columns if c.startswith("recall@")] == [
        "recall@1",
        "recall@5",
        "recall@10",
        "recall@30",
    ]


def test_stage_writes_typed_tables_and_a_recall_report(make_run_config) -> None:
    result = run(load_config(make_run_config()))
    out = result.out_dir
    candidates = pl.read_parquet(out / "candidates.parquet")
    assert dict(candidates.schema) == schema.CANDIDATES
    assert candidates.height > 0
    assert candidates.group_by("mention_id").agg(pl.col("rank").max())["rank"].max() <= 4  # k = 4
    ranks = candidates.group_by("mention_id").agg(pl.col("rank").sort())
    assert all(r == list(range(1, len(r) + 1)) for r in ranks["rank"].to_list())
    mentions = pl.read_parquet(out / "mentions.parquet")
    assert {c: mentions.schema[c] for c in schema.MENTIONS} == schema.MENTIONS
    assert mentions.height == 16
    entities = pl.read_parquet(out / "entities.parquet")
    assert dict(entities.schema) == schema.ENTITIES and entities.height == 5
    assert result.counts == {"mentions": 16, "entities": 5, "candidates": candidates.height}
    recall = result.summary["recall"]
    assert set(recall["lang"]) == {"en", "es", "ru", "all"}
    # Each gold appears at most once per mention and is flagged.
    gold = candidates.filter(pl.col("is_gold"))
    assert gold.group_by("mention_id").len()["len"].max() == 1
    manifest = (out / "manifest.json").read_text(encoding="utf-8")
    assert '"key"' in manifest and "candidates.parquet" in manifest


def test_leading_articles_are_dropped_before_matching(triage) -> None:
    kb = TINY_KB + [
        {"kb_id": "Q7", "name": "World Bank", "type": "ORG"},
        {"kb_id": "Q8", "name": "Banco Mundial", "type": "ORG"},
    ]
    records = [
        record("x1", "el Banco Mundial", "Q8", "test", lang="es"),
        record("x2", "The World Bank", "Q7", "test"),
        record("x3", "the", None, "test"),
    ]  # a lone article stays itself
    candidates, _ = triage(records, kb=kb, **ONLY_KB_NAMES)
    found = by_mention(candidates)
    assert found["x1"][0][0] == "Q8" and found["x2"][0][0] == "Q7"
    assert "x3" not in found


def test_all_capitals_mentions_meet_the_initials_of_kb_names(triage) -> None:
    kb = TINY_KB + [
        {"kb_id": "Q7", "name": "Government Accountability Office", "type": "ORG"},
        {"kb_id": "Q8", "name": "Bank of England", "type": "ORG"},
    ]
    records = [
        record("x1", "the GAO", "Q7", "test"),
        record("x2", "BE", "Q8", "test"),
        record("x3", "Gao", None, "test"),
    ]  # not written in capitals: a name, not initials
    candidates, _ = triage(records, kb=kb, **ONLY_KB_NAMES)
    found = by_mention(candidates)
    assert found["x1"] == [("Q7", pytest.approx(0.5), ("kb_name",))]
    assert found["x2"][0][0] == "Q8"
    assert "x3" not in found


def test_fuzzy_matching_ignores_shared_function_words(triage) -> None:
    kb = TINY_KB + [
        {"kb_id": "Q7", "name": "Banco de Inglaterra", "type": "ORG"},
        {"kb_id": "Q8", "name": "Museo de Arte Moderno de la Ciudad", "type": "ORG"},
    ]
    records = [
        record("x1", "Banco de Inglatera", "Q7", "test", lang="es"),  # a typo
        record("x2", "Puerto de la Cruz", None, "test", lang="es"),
    ]  # shares only "de la"
    candidates, _ = triage(records, kb=kb, **ONLY_FUZZY)
    found = by_mention(candidates)
    assert found["x1"][0][0] == "Q7"
    assert "Q8" not in [kb_id for kb_id, _, _ in found.get("x2", [])]


def test_kb_indexes_are_reused_until_the_kb_changes(triage, tmp_path: Path) -> None:
    records = [record("x1", "Barak Obama", "Q1", "test")]
    _, result = triage(records, **{**ONLY_FUZZY, "use_dense": True})
    index_root = index_root_of(result)
    built = {p.name: p.stat().st_mtime_ns for p in index_root.iterdir()}
    assert {name.split("-")[0] for name in built} == {"entities", "names", "dense"}
    _, result = triage(records, **{**ONLY_FUZZY, "use_dense": True, "k": 3})  # the stage re-runs, the KB is the same
    assert {p.name: p.stat().st_mtime_ns for p in index_root.iterdir()} == built
    kb = TINY_KB + [{"kb_id": "Q9", "name": "Barack Hussein Obama", "type": "PER"}]
    candidates, result = triage(records, kb=kb, **{**ONLY_FUZZY, "use_dense": True})
    index_root = index_root_of(result)  # the store keys each KB's indexes by its content
    rebuilt = {p.name for p in index_root.iterdir()}
    assert len(rebuilt) == 3 and not rebuilt & set(built)  # new keys, in the new KB's own folder
    assert not list(index_root.glob(".*.tmp"))
    assert "Q9" in candidates["kb_id"].to_list()


def test_dense_source_gives_the_same_top_names_from_an_hnsw_index(triage, monkeypatch) -> None:
    from pipeline.candidates import kb_index

    records = [record("x1", "Barack Obama", "Q1", "test"), record("x2", "Moscou", "Q3", "test")]
    exact, _ = triage(records, **ONLY_DENSE)
    monkeypatch.setattr(kb_index, "EXACT_DENSE_LIMIT", 1)
    approximate, result = triage(records, kb=[*TINY_KB, {"kb_id": "Q9", "name": "Zzz", "type": "LOC"}], **ONLY_DENSE)
    import faiss

    index = faiss.read_index(str(next(index_root_of(result).glob("dense-*")) / "names.faiss"))
    assert hasattr(index, "hnsw")
    top = lambda frame: by_mention(frame.filter(pl.col("kb_id") != "Q9"))  # noqa: E731
    assert {m: c[0][0] for m, c in top(exact).items()} == {m: c[0][0] for m, c in top(approximate).items()}


def test_ascii_keys_take_the_fast_path_to_the_same_keys() -> None:
    from pipeline.core.textnorm import add_keys, fold, romanise

    names = ["The GAO", "el Banco Mundial", "Bank_of  England!", "A", "O'Neill", "  spaced  out ", "Zürich AG"]
    keyed = add_keys(pl.DataFrame({"name": names}), "name")
    assert keyed["name_fold"].to_list() == [fold(n) for n in names]
    assert keyed["name_roman"].to_list() == [romanise(n) for n in names]


def test_document_groups_join_translations_and_folds_hold_training_documents_only() -> None:
    from pipeline.candidates.crossfit import document_group, training_folds

    mentions = pl.DataFrame(
        {
            "doc_id": ["news:en:A", "news:es:A", "news:en:D", "doc-7", "news:en:A"],
            "lang": ["en", "es", "en", "en", "en"],
            "split": ["train", "train", "train", "train", "dev"],
        }
    )
    assert document_group(mentions).to_list() == ["news:A", "news:A", "news:D", "doc-7", "news:A"]
    # a trial found `en-US` and `EN` ids left ungrouped (the prior leaked through 10-12 of 16 golds)
    tagged = pl.DataFrame(
        {
            "doc_id": ["t:en-US:d0", "t:es-MX:d0", "t:EN:d1", "t:ES:d1", "demo-en-d01", "demo-es-d01", "x-zh_Hant-9"],
            "lang": ["en", "es", "en", "es", "en", "es", "zh"],
        }
    )
    groups = document_group(tagged).to_list()
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[4] == groups[5] != groups[0]
    assert groups[6] == "x-9"
    # the tag only as a whole token: "english" and "den" keep their letters
    assert document_group(pl.DataFrame({"doc_id": ["english:den:7"], "lang": ["en"]})).to_list() == ["english:den:7"]
    folds = training_folds(mentions, 2).to_list()
    # news:A and news:D fall in different folds of two (CRC-32 1 and 0); a dev mention is in none
    assert folds[0] == folds[1] == 1 and folds[2] == 0 and folds[4] == -1


def test_crossfit_gives_training_mentions_only_the_other_folds_labels(triage) -> None:
    def placed(mention_id: str, surface: str, gold: str | None, split: str, doc: str, lang: str = "en") -> dict:
        return {**record(mention_id, surface, gold, split, lang), "doc_id": f"news:{lang}:{doc}"}

    records = [
        placed("a-en", "POTUS", "Q1", "train", "A"),
        placed("a-es", "POTUS", "Q1", "train", "A", lang="es"),  # the translation: the same fold
        placed("d-en", "POTUS", "Q2", "train", "D"),
        placed("x1", "POTUS", None, "test", "C"),
    ]
    plain = by_mention(triage(records, **ONLY_PRIORS)[0])
    assert plain["a-en"][0][:2] == ("Q1", pytest.approx(2 / 3))  # its own label among the counts

    crossfit = by_mention(triage(records, crossfit_folds=2, **ONLY_PRIORS)[0])
    assert [c[:2] for c in crossfit["a-en"]] == [("Q2", pytest.approx(1.0))]  # from D only
    assert [c[:2] for c in crossfit["a-es"]] == [("Q2", pytest.approx(1.0))]  # not from its English twin
    assert [c[:2] for c in crossfit["d-en"]] == [("Q1", pytest.approx(1.0))]
    assert crossfit["x1"] == plain["x1"]  # a test mention sees every training label either way


def test_crossfit_off_keeps_the_stage_key_and_one_fold_is_refused(make_run_config) -> None:
    from pipeline.core.errors import ConfigError
    from pipeline.triage.stage import identity

    off = load_config(make_run_config(name="off.toml"))
    assert "crossfit_folds" not in identity(off).settings["triage"]
    on = load_config(make_run_config(name="on.toml", triage={"crossfit_folds": 5}))
    assert identity(on).settings["triage"]["crossfit_folds"] == 5
    with pytest.raises(ConfigError, match="crossfit_folds"):
        load_config(make_run_config(name="one.toml", triage={"crossfit_folds": 1}))
