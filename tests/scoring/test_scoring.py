"""TAC KBP 2015 scorer: every measure equals neleval 3.1.1 to 1e-9, and `.tab` errors.

neleval is run in-process (its own `PrepareTac15` then `Evaluate`, on temp files) behind
a shim that restores the `collections` aliases it imports. MEANTIME-based tests read
`../shared/data` next to the repository and skip when it is absent; neleval comparisons
skip when neleval cannot be imported.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.core.errors import InputError, SchemaError
from pipeline.formats.tac import language_expr, language_of_doc, read_tab, write_tab
from pipeline.scoring.measures import CLUSTER_MEASURES, MEASURES, MICRO_AVERAGE, SET_MEASURES, score, score_files
from pipeline.scoring.table import format_table

REPO_ROOT = Path(__file__).resolve().parents[2]
MEANTIME_TAC = (REPO_ROOT / ".." / "shared" / "data" / "meantime" / "tac").resolve()
TOLERANCE = 1e-9
LANGUAGES = ("en", "es", "it", "nl")


def _import_neleval():
    """neleval's Evaluate, PrepareTac15 and Reader, or None when it cannot be imported."""
    for name in ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable"):
        setattr(collections, name, getattr(collections.abc, name))
    if "xml.etree.cElementTree" not in sys.modules:  # removed from the stdlib in Python 3.9
        try:
            importlib.import_module("xml.etree.cElementTree")
        except ImportError:
            sys.modules["xml.etree.cElementTree"] = importlib.import_module("xml.etree.ElementTree")
    try:
        from neleval.document import Reader
        from neleval.evaluate import Evaluate
        from neleval.tac import PrepareTac15
    except ImportError:
        return None
    return Evaluate, PrepareTac15, Reader


NELEVAL = _import_neleval()
needs_neleval = pytest.mark.skipif(
    NELEVAL is None, reason="neleval 3.1.1 is not importable; pip install --no-deps neleval==3.1.1"
)


@pytest.fixture(scope="module")
def meantime() -> dict[str, Path]:
    if not MEANTIME_TAC.is_dir():
        pytest.skip(f"MEANTIME TAC files not found at {MEANTIME_TAC} (shared data folder ../shared/data is absent)")
    return {split: MEANTIME_TAC / f"gold_{split}.tab" for split in ("train", "dev", "test")}


# ---------------------------------------------------------------------------- neleval


def _neleval_prepare(tab_path: Path, out_path: Path) -> Path:
    _, PrepareTac15, _ = NELEVAL
    with open(tab_path, encoding="utf-8") as handle:
        text = PrepareTac15(handle)()
    out_path.write_text(text + "\n" if text else "", encoding="utf-8")
    return out_path


def _neleval_scores(gold_path: Path, system_path: Path, work: Path, by_language: bool = False) -> dict:
    """neleval's {measure: {precision, recall, fscore}} (and per language) for two `.tab` files."""
    Evaluate, _, Reader = NELEVAL
    gold_prepared = _neleval_prepare(gold_path, work / "gold.neleval")
    system_prepared = _neleval_prepare(system_path, work / "system.neleval")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {"overall": Evaluate(str(system_prepared), gold=str(gold_prepared), measures=list(MEASURES))()}
        if by_language:
            documents = {}
            for name, path in (("gold", gold_prepared), ("system", system_prepared)):
                with open(path, encoding="utf-8") as handle:
                    documents[name] = list(Reader(handle))
                for document in documents[name]:
                    for annotation in document.annotations:
                        for candidate in annotation.candidates:
                            candidate.lang = language_of_doc(annotation.docid) or "unknown"
            grouped = Evaluate(
                documents["system"], gold=documents["gold"], measures=list(MEASURES), group_by=["lang"]
            )()
            for name, values in grouped.items():
                measure, _, group = name.partition(";lang=")
                if not group.strip('"').startswith("<"):  # skip neleval's <micro>/<macro> summaries
                    results.setdefault(group.strip('"'), {})[measure] = values
    return results


def _assert_same(ours: dict, theirs: dict) -> None:
    for measure in MEASURES:
        for our_key, their_key in (("precision", "precision"), ("recall", "recall"), ("f1", "fscore")):
            assert ours[measure][our_key] == pytest.approx(theirs[measure][their_key], abs=TOLERANCE), (
                measure,
                our_key,
            )
    assert ours[MICRO_AVERAGE]["micro_average"] == pytest.approx(theirs["strong_all_match"]["recall"], abs=TOLERANCE)


def _compare(gold: pl.DataFrame, system: pl.DataFrame, work: Path, by_language: bool = False) -> dict:
    gold_path, system_path = work / "gold.tab", work / "system.tab"
    write_tab(gold, gold_path)
    write_tab(system, system_path)
    ours = score_files(gold_path, system_path, strict=False)
    theirs = _neleval_scores(gold_path, system_path, work, by_language=by_language)
    _assert_same(ours["overall"], theirs["overall"])
    if by_language:
        assert sorted(ours["by_language"]) == sorted(set(theirs) - {"overall"})
        for language, measures in ours["by_language"].items():
            _assert_same(measures, theirs[language])
    return ours


# ---------------------------------------------------------------------------- generators


def _pick(rng: np.random.Generator, n: int, rate: float) -> pl.Series:
    return pl.Series(rng.random(n) < rate)


def _with_nil_clusters(gold: pl.DataFrame) -> pl.DataFrame:
    """Gold whose NILs are clustered by lower-cased mention string (NIL00001, ...)."""
    cluster = pl.col("mention").str.to_lowercase().rank("dense").cast(pl.Int64)
    return gold.with_columns(
        pl.when(pl.col("kb_id").str.starts_with("NIL"))
        .then(pl.format("NIL{}", cluster.cast(pl.String).str.zfill(5)))
        .otherwise(pl.col("kb_id"))
        .alias("kb_id")
    )


def _perturb(gold: pl.DataFrame, seed: int, rate: float = 0.15) -> pl.DataFrame:
    """Random relinks, NIL flips both ways, NIL cluster merges and splits, type errors."""
    rng = np.random.default_rng(seed)
    n = gold.height
    kb_pool = gold.filter(~pl.col("kb_id").str.starts_with("NIL"))["kb_id"].unique().sort()
    random_kb = pl.Series(kb_pool.to_numpy()[rng.integers(0, kb_pool.len(), n)])
    is_nil = pl.col("kb_id").str.starts_with("NIL")
    nil_ids = gold.filter(pl.col("kb_id").str.starts_with("NIL"))["kb_id"].unique().sort()
    merge_target = pl.Series(nil_ids.to_numpy()[rng.integers(0, max(nil_ids.len(), 1), n)]) if nil_ids.len() else None
    system = gold.with_columns(
        relink=_pick(rng, n, rate),
        to_nil=_pick(rng, n, rate / 2),
        to_kb=_pick(rng, n, rate / 2),
        merge=_pick(rng, n, rate),
        split=_pick(rng, n, rate),
        retype=_pick(rng, n, rate / 2),
        renominal=_pick(rng, n, rate / 2),
        random_kb=random_kb,
        row=pl.int_range(pl.len()),
    )
    kb_id = (
        pl.when(~is_nil & pl.col("relink"))
        .then(pl.col("random_kb"))
        .when(~is_nil & pl.col("to_nil"))
        .then(pl.format("NIL_sys{}", pl.col("row") % 7))
        .when(is_nil & pl.col("to_kb"))
        .then(pl.col("random_kb"))
        .when(is_nil & pl.col("split"))
        .then(pl.format("{}_split", pl.col("kb_id")))
        .otherwise(pl.col("kb_id"))
    )
    if merge_target is not None:
        system = system.with_columns(merge_target=merge_target)
        kb_id = pl.when(is_nil & pl.col("merge") & ~pl.col("to_kb")).then(pl.col("merge_target")).otherwise(kb_id)
    entity_types = gold["entity_type"].unique().sort()
    return system.with_columns(
        kb_id.alias("kb_id"),
        pl.when(pl.col("retype"))
        .then(pl.Series(entity_types.to_numpy()[rng.integers(0, entity_types.len(), n)]))
        .otherwise(pl.col("entity_type"))
        .alias("entity_type"),
        pl.when(pl.col("renominal"))
        .then(pl.when(pl.col("mention_type") == "NAM").then(pl.lit("NOM")).otherwise(pl.lit("NAM")))
        .otherwise(pl.col("mention_type"))
        .alias("mention_type"),
        pl.Series(np.round(rng.random(n), 3)).alias("confidence"),
    ).select(gold.columns)


def _synthetic_gold(seed: int, n: int = 600, n_entities: int = 40, nil_rate: float = 0.2) -> pl.DataFrame:
    """Mentions over 4 languages x 6 documents, KB ids from a small pool, NIL clusters."""
    rng = np.random.default_rng(seed)
    documents = np.array([f"synth:{lang}:doc{d}" for lang in LANGUAGES for d in range(6)])
    doc_of = documents[rng.integers(0, len(documents), n)]
    start = rng.integers(0, 5000, n) * 10  # x10 and length < 10: spans never collide
    entity = rng.integers(0, n_entities, n)
    nil = rng.random(n) < nil_rate
    kb_id = np.where(nil, np.char.add("NIL", (entity % 9).astype(str)), np.char.add("E", entity.astype(str)))
    frame = pl.DataFrame(
        {
            "run_id": "gold",
            "mention_id": [f"m{i}" for i in range(n)],
            "mention": np.char.add("name", entity.astype(str)),
            "doc_id": doc_of,
            "start": start,
            "end": start + rng.integers(0, 9, n),
            "kb_id": kb_id,
            "entity_type": np.array(["PER", "ORG", "GPE", "LOC"])[entity % 4],
            "mention_type": np.where(rng.random(n) < 0.7, "NAM", "NOM"),
            "confidence": 1.0,
        }
    )
    return frame.unique(subset=["doc_id", "start", "end"], keep="first", maintain_order=True)


def _unmatched(system: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Drop some system spans and add shifted (gold-less) ones."""
    rng = np.random.default_rng(seed)
    kept = system.filter(pl.Series(rng.random(system.height) > 0.1))
    shifted = system.filter(pl.Series(rng.random(system.height) < 0.1)).with_columns(
        pl.col("start") + 1, pl.col("end") + 1, pl.format("{}_x", pl.col("mention_id")).alias("mention_id")
    )
    return pl.concat([kept, shifted])


# ---------------------------------------------------------------------------- neleval comparisons


@needs_neleval
@pytest.mark.parametrize("split, by_language", [("train", False), ("dev", True), ("test", True)])
def test_meantime_gold_against_itself(meantime, tmp_path, split, by_language):
    gold = read_tab(meantime[split])
    ours = _compare(gold, gold, tmp_path, by_language=by_language)
    assert ours["overall"]["b_cubed"]["f1"] == 1.0 and ours["overall"][MICRO_AVERAGE]["micro_average"] == 1.0
    assert sorted(ours["by_language"]) == list(LANGUAGES)


@needs_neleval
@pytest.mark.parametrize("split, seed, clustered", [("dev", 1, False), ("test", 2, True), ("dev", 3, True)])
def test_meantime_perturbed_systems(meantime, tmp_path, split, seed, clustered):
    gold = read_tab(meantime[split])
    if clustered:
        gold = _with_nil_clusters(gold)
    system = _perturb(gold, seed)
    ours = _compare(gold, system, tmp_path, by_language=True)
    assert 0.0 < ours["overall"]["b_cubed"]["f1"] < 1.0
    assert sorted(ours["by_language"]) == list(LANGUAGES)


@needs_neleval
def test_meantime_unmatched_spans_as_neleval(meantime, tmp_path):
    gold = _with_nil_clusters(read_tab(meantime["dev"]))
    system = _unmatched(_perturb(gold, 4), seed=5)
    ours = _compare(gold, system, tmp_path, by_language=True)
    assert ours["counts"]["overall"]["matched_mentions"] < gold.height


@needs_neleval
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_random_systems(tmp_path, seed):
    gold = _synthetic_gold(seed)
    system = _unmatched(_perturb(gold, seed + 100, rate=0.3), seed + 200)
    _compare(gold, system, tmp_path, by_language=True)


@needs_neleval
@pytest.mark.parametrize(
    "case",
    [
        "all_nil_system",
        "no_nil_system",
        "one_giant_nil_cluster",
        "all_nil_gold",
        "no_overlap",
        "singletons",
        "wikipedia_urls",
        "huge_offsets",
        "system_only_language",
    ],
)
def test_edge_cases(tmp_path, case):
    gold = _synthetic_gold(20, n=300)
    system = _perturb(gold, 21)
    if case == "all_nil_system":
        system = system.with_columns(pl.format("NIL{}", pl.int_range(pl.len()) % 5).alias("kb_id"))
    elif case == "no_nil_system":
        system = system.with_columns(
            pl.when(pl.col("kb_id").str.starts_with("NIL")).then(pl.lit("E0")).otherwise(pl.col("kb_id")).alias("kb_id")
        )
    elif case == "one_giant_nil_cluster":
        gold = gold.with_columns(pl.lit("NIL").alias("kb_id"))
        system = system.with_columns(
            pl.when(pl.int_range(pl.len()) % 3 == 0).then(pl.lit("NIL")).otherwise(pl.col("kb_id")).alias("kb_id")
        )
    elif case == "all_nil_gold":  # zero denominators for link measures
        gold = gold.with_columns(pl.format("NIL{}", pl.int_range(pl.len()) % 4).alias("kb_id"))
        system = system.with_columns(pl.format("NIL{}", pl.int_range(pl.len()) % 6).alias("kb_id"))
    elif case == "no_overlap":
        system = system.with_columns(pl.col("start") + 1, pl.col("end") + 1)
    elif case == "singletons":
        system = system.with_columns(pl.format("NIL{}", pl.int_range(pl.len())).alias("kb_id"))
    elif case == "wikipedia_urls":  # ids compared verbatim: prepare-tac15 normalises only with --mapping
        gold = gold.with_columns(pl.format("Title_{}", pl.col("kb_id")).alias("kb_id"))
        system = system.with_columns(
            pl.when(pl.int_range(pl.len()) % 2 == 0)
            .then(pl.format("http://en.wikipedia.org/wiki/Title {}", pl.col("kb_id")))
            .otherwise(pl.format("Title_{}", pl.col("kb_id")))
            .alias("kb_id")
        )
    elif case == "huge_offsets":  # too wide to bit-pack: the rank fallback of _span_key
        gold = gold.with_columns(pl.col("start") + 2**61, pl.col("end") + 2**61)
        system = system.with_columns(pl.col("start") + 2**61, pl.col("end") + 2**61)
    elif case == "system_only_language":  # neleval reports gold languages only
        extra = system.head(30).with_columns(pl.lit("synth:fr:doc0").alias("doc_id"))
        system = pl.concat([system, extra])
    ours = _compare(gold, system, tmp_path, by_language=True)
    if case == "all_nil_gold":
        assert ours["overall"]["strong_link_match"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    if case == "system_only_language":
        assert "fr" not in ours["by_language"]
        assert ours["counts"]["overall"]["system_mentions"] == system.height


def _with_duplicates(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Frame plus rival rows on 40% of its spans (some tying on confidence), shuffled."""
    rng = np.random.default_rng(seed)
    doubled = frame.filter(pl.Series(rng.random(frame.height) < 0.4))
    rivals = doubled.with_columns(
        pl.lit("E_rival").alias("kb_id"),
        pl.Series(np.round(rng.random(doubled.height), 1)).alias("confidence"),  # ties included
        pl.lit("ORG").alias("entity_type"),
    )
    tie_breakers = doubled.head(20).with_columns(pl.lit("NIL_tie").alias("kb_id"))  # same confidence
    return pl.concat([frame, rivals, tie_breakers]).sample(fraction=1.0, shuffle=True, seed=seed)


@needs_neleval
@pytest.mark.parametrize("in_gold", [False, True])
def test_duplicate_links_highest_confidence_wins(tmp_path, in_gold):
    gold = _synthetic_gold(30, n=300)
    gold = gold.with_columns(pl.Series(np.round(np.random.default_rng(31).random(gold.height), 1)).alias("confidence"))
    system = _with_duplicates(_perturb(gold, 32), seed=33)
    if in_gold:
        gold = _with_duplicates(gold, seed=34)
    ours = _compare(gold, system, tmp_path, by_language=True)
    assert ours["counts"]["overall"]["system_rows"] > ours["counts"]["overall"]["system_mentions"]


def test_duplicate_tie_goes_to_first_row():
    gold = _synthetic_gold(40, n=20).with_columns(pl.lit("E1").alias("kb_id"))
    first = gold.with_columns(pl.lit(0.5).alias("confidence"))
    second = first.with_columns(pl.lit("E2").alias("kb_id"))
    assert score(gold, pl.concat([first, second]))["overall"]["strong_all_match"]["f1"] == 1.0
    assert score(gold, pl.concat([second, first]))["overall"]["strong_all_match"]["f1"] == 0.0
    higher = second.with_columns(pl.lit(0.6).alias("confidence"))
    assert score(gold, pl.concat([first, higher]))["overall"]["strong_all_match"]["f1"] == 0.0


# ---------------------------------------------------------------------------- API behaviour


def test_mention_set_mismatch_is_refused(tmp_path):
    gold = _synthetic_gold(50, n=50)
    extra = gold.head(1).with_columns(pl.col("start") + 1, pl.lit("extra").alias("mention_id"))
    system = pl.concat([gold.slice(2), extra])
    with pytest.raises(InputError, match="E601") as error:
        score(gold, system)
    message = error.value.format_message()
    assert "2 gold mention(s)" in message and "1 system mention(s)" in message and "extra at" in message
    assert "\n" not in message
    gold_path, system_path = tmp_path / "gold.tab", tmp_path / "run.tab"
    write_tab(gold, gold_path)
    write_tab(system, system_path)
    with pytest.raises(InputError, match="E601.*run.tab"):
        score_files(gold_path, system_path)
    assert score(gold, system, strict=False)["counts"]["overall"]["matched_mentions"] == gold.height - 2


def test_mention_languages_by_document():
    gold = _synthetic_gold(60, n=80).with_columns(pl.format("doc{}", pl.col("start") % 3).alias("doc_id"))
    languages = pl.DataFrame({"doc_id": ["doc0", "doc1"], "lang": ["de", "fr"]})
    report = score(gold, gold, languages)
    assert sorted(report["by_language"]) == ["de", "fr", "unknown"]
    counts = report["counts"]["by_language"]
    assert sum(group["gold_mentions"] for group in counts.values()) == report["counts"]["overall"]["gold_mentions"]
    with pytest.raises(InputError, match="E604"):
        score(gold, gold, pl.DataFrame({"doc_id": ["doc0", "doc0"], "lang": ["de", "fr"]}))
    with pytest.raises(SchemaError, match="E602"):
        score(gold, gold, pl.DataFrame({"mention_id": ["m1"], "lang": ["de"]}))
    with pytest.raises(SchemaError, match="E602"):
        score(gold.drop("kb_id"), gold)


def test_format_table_lists_every_measure_and_group_within_100_columns():
    gold = _synthetic_gold(70, n=200)
    report = score(gold, _perturb(gold, 71))
    table = format_table(report)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    # Three blocks (F1, precision, recall), each a head row and one row per group.
    groups = ["overall", *sorted(LANGUAGES)]
    blocks = [block.splitlines() for block in table.split("\n\n")[:3]]
    assert [block[0].split()[0] for block in blocks] == ["F1", "precision", "recall"]
    assert [[row.split()[0] for row in block[1:]] for block in blocks] == [groups] * 3
    f1_head, overall_f1 = blocks[0][0].split(), blocks[0][1].split()
    assert f1_head[1:] == ["micro", "link", "nil", "all", "t-link", "t-nil", "t-all", "B³", "B³+", "gold", "system"]
    assert overall_f1[1] == f"{report['overall'][MICRO_AVERAGE]['micro_average']:.4f}"
    assert overall_f1[2:10] == [f"{report['overall'][measure]['f1']:.4f}" for measure in MEASURES]
    assert overall_f1[10:] == ["200", "200"]
    recall_es = blocks[2][groups.index("es") + 1].split()
    assert recall_es[1:] == [f"{report['by_language']['es'][measure]['recall']:.4f}" for measure in MEASURES]
    # The legend names every measure as neleval does.
    legend = table.split("\n\n")[3]
    assert all(name in legend for name in (*SET_MEASURES[:3], "strong_typed_*", *CLUSTER_MEASURES, MICRO_AVERAGE))


def test_format_table_stays_narrow_for_seven_languages():
    languages = ["ar", "en", "es", "it", "nl", "ru", "zh"]
    gold = pl.DataFrame({"mention_id": [f"m{i}" for i in range(14)], "doc_id": [f"meantime:{languages[i % 7]}:d{i}" for i in range(14)],
                         "start": [0] * 14, "end": [4] * 14, "kb_id": ["E1", "NIL1"] * 7, "entity_type": ["PER"] * 14,
                         "mention_type": ["NAM"] * 14, "confidence": [1.0] * 14})  # fmt: skip
    table = format_table(score(gold, gold))
    assert max(len(line) for line in table.splitlines()) <= 100
    assert [line.split()[0] for line in table.split("\n\n")[0].splitlines()[1:]] == ["overall", *languages]


def test_language_of_doc_scalar_and_column_agree():
    doc_ids = [
        "ENG_NW_001",
        "CMN_DF_1",
        "SPA_NW_2",
        "meantime:nl:1007169",
        "meantime:en:a:b",
        "bolt-eng-DF",
        "x:toolong:1",
        "ENGX:fr:1",
    ]
    expected = ["en", "zh", "es", "nl", "en", None, None, "en"]
    assert [language_of_doc(doc_id) for doc_id in doc_ids] == expected
    column = pl.DataFrame({"doc_id": doc_ids}).select(language_expr(pl.col("doc_id")).alias("lang"))["lang"]
    assert column.to_list() == expected


# ---------------------------------------------------------------------------- .tab reading and writing

GOOD_LINES = [
    "run\tm1\tBarack Obama\tENG_NW_1:0-11\tE0001\tPER\tNAM\t0.9",
    "run\tm2\the\tmeantime:en:doc:1:20-21\tNIL7\tPER\tNOM\t1.0",
]


def _write(tmp_path: Path, text: str | bytes, name: str = "run.tab") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_read_tab_parses_spans_on_the_last_colon(tmp_path):
    frame = read_tab(_write(tmp_path, "\n".join(GOOD_LINES) + "\n"))
    assert frame["doc_id"].to_list() == ["ENG_NW_1", "meantime:en:doc:1"]
    assert frame["start"].to_list() == [0, 20] and frame["end"].to_list() == [11, 21]
    assert frame["confidence"].to_list() == [0.9, 1.0]
    assert frame.schema["start"] == pl.Int64 and frame.schema["confidence"] == pl.Float64


def test_read_tab_bom_and_crlf(tmp_path):
    plain = read_tab(_write(tmp_path, "\n".join(GOOD_LINES)))
    bom_crlf = read_tab(_write(tmp_path, b"\xef\xbb\xbf" + "\r\n".join(GOOD_LINES).encode() + b"\r\n", "crlf.tab"))
    assert bom_crlf.equals(plain)
    assert bom_crlf["run_id"][0] == "run" and bom_crlf["confidence"][1] == 1.0


def test_read_tab_without_confidence_column(tmp_path):
    lines = [line.rsplit("\t", 1)[0] for line in GOOD_LINES]
    assert read_tab(_write(tmp_path, "\n".join(lines) + "\n"))["confidence"].to_list() == [1.0, 1.0]


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ("run\tm3\tx\tENG_NW_1:3-4\tE1\tPER\tNAM", "has 7 tab-separated columns, expected 8"),
        ("run\tm3\tx\tENG_NW_1:3-4\tE1\tPER\tNAM\t0.5\textra", "has 9 tab-separated columns"),
        ("run\tm3\tx\tENG_NW_1-3-4\tE1\tPER\tNAM\t0.5", "is not doc_id:start-end"),
        ("run\tm3\tx\tENG_NW_1:a-4\tE1\tPER\tNAM\t0.5", "is not doc_id:start-end"),
        ("run\tm3\tx\tENG_NW_1:9-4\tE1\tPER\tNAM\t0.5", "ends before it starts"),
        ("run\tm3\tx\tENG_NW_1:3-4\tE1\tPER\tNAM\thigh", "confidence 'high'"),
        ("run\tm3\tx\tENG_NW_1:3-4\t\tPER\tNAM\t0.5", "KB id (column 5) is empty"),
    ],
)
def test_read_tab_malformed_line(tmp_path, bad_line, expected):
    path = _write(tmp_path, "\n".join([*GOOD_LINES, bad_line, GOOD_LINES[0]]) + "\n")
    with pytest.raises(InputError, match="E112") as error:
        read_tab(path)
    message = error.value.format_message()
    assert f"{path}:3:" in message and expected in message and "\n" not in message


def test_read_tab_empty_missing_and_not_utf8(tmp_path):
    with pytest.raises(InputError, match=r"E107.*empty\.tab"):
        read_tab(_write(tmp_path, b"\xef\xbb\xbf\n", "empty.tab"))
    with pytest.raises(InputError, match=r"E108.*absent\.tab"):
        read_tab(tmp_path / "absent.tab")
    with pytest.raises(InputError, match=r"E110.*latin\.tab:2"):
        latin = (GOOD_LINES[0] + "\n").encode() + b"run\tm\tCaf\xe9\tD:1-2\tE\tPER\tNAM\t1\n"
        read_tab(_write(tmp_path, latin, "latin.tab"))


def test_write_tab_round_trips_exact_floats(tmp_path):
    rng = np.random.default_rng(80)
    frame = _synthetic_gold(81, n=100).with_columns(
        pl.Series(rng.random(100) * 10.0 ** rng.integers(-8, 3, 100)).alias("confidence")
    )
    path = tmp_path / "sub" / "out.tab"
    write_tab(frame, path)
    assert read_tab(path).equals(frame.cast({"start": pl.Int64, "end": pl.Int64}))
    first_confidence = path.read_text().splitlines()[0].rsplit("\t", 1)[1]
    assert first_confidence == repr(frame["confidence"][0])
    assert [p.name for p in path.parent.iterdir()] == ["out.tab"]  # no temp file left behind
    with pytest.raises(SchemaError, match="E605"):
        write_tab(frame.with_columns(pl.lit("a\tb").alias("mention")), path)


def test_meantime_files_round_trip(meantime, tmp_path):
    for path in meantime.values():
        write_tab(read_tab(path), tmp_path / path.name)
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()


def test_scores_do_not_depend_on_row_order_bit_for_bit() -> None:
    """B-cubed sums many fractions; in another order a float sum can differ in its last bit.

    A rerun (e.g. after a crash) must give the same metrics.json, so the sums are exact.
    """
    import json as json_module

    rng = np.random.default_rng(0)
    count = 400

    def frame(kb_ids: list[str]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "mention_id": [f"m{i}" for i in range(count)],
                "doc_id": [f"ENG_NW_{i % 7}" for i in range(count)],
                "start": np.arange(count) * 10,
                "end": np.arange(count) * 10 + 3,
                "kb_id": kb_ids,
                "entity_type": "PER",
                "mention_type": "NAM",
                "confidence": 1.0,
            }
        )

    gold = frame([f"Q{x}" if x < 30 else f"NIL{x}" for x in rng.integers(0, 40, count)])
    system = frame([f"Q{x}" if x < 30 else f"NIL{x}" for x in rng.integers(0, 45, count)])
    results = {
        json_module.dumps(
            score(
                gold.sample(fraction=1, shuffle=True, seed=seed),
                system.sample(fraction=1, shuffle=True, seed=seed + 100),
            ),
            sort_keys=True,
        )
        for seed in range(20)
    }
    assert len(results) == 1
