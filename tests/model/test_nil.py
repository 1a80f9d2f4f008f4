"""The learned NIL decision, the choice between it and thresholds, and the error analysis."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest

from pipeline.core.config import EvaluateConfig
from pipeline.evaluate import nil_choice
from pipeline.evaluate.error_analysis import analyse, markdown, outcome_scores
from pipeline.model import nil_classifier
from pipeline.model.nil import cluster_nils, decide_nil

SCHEMA = {
    "mention_id": pl.String,
    "lang": pl.String,
    "mention": pl.String,
    "entity_type": pl.String,
    "best_kb_id": pl.String,
    "best_score": pl.Float64,
    "second_score": pl.Float64,
    "gold_kb_id": pl.String,
}


def evidence_table(rows: list[tuple]) -> pl.DataFrame:
    """Predictions with evidence from rows (mention_id, lang, best_kb_id, best_score, second_score, gold)."""
    frame = pl.DataFrame(
        [(m, lang, m, "PER", best, score, second, gold) for m, lang, best, score, second, gold in rows],
        schema=SCHEMA,
        orient="row",
    )
    candidates = pl.DataFrame(
        {
            "mention_id": [r[0] for r in rows if r[2]],
            "rank": 1,
            "kb_id": [r[2] for r in rows if r[2]],
            "score": 1.0,
            "sources": [["kb_name"]] * sum(1 for r in rows if r[2]),
        },
        schema={
            "mention_id": pl.String,
            "rank": pl.Int32,
            "kb_id": pl.String,
            "score": pl.Float64,
            "sources": pl.List(pl.String),
        },
    )
    return nil_classifier.add_evidence(frame, candidates)


def separable(n: int, seed: int, lang: str = "en") -> pl.DataFrame:
    """n mentions: a third NIL scored low (-0.8..-0.4), the rest right links scored high (0.2..0.9)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append((f"{lang}{i}", lang, f"Q{i}", float(rng.uniform(-0.8, -0.4)), -0.9, "NIL"))
        else:
            rows.append((f"{lang}{i}", lang, f"Q{i}", float(rng.uniform(0.2, 0.9)), -0.5, f"Q{i}"))
    return evidence_table(rows)


def test_add_evidence_counts_candidates_and_reads_the_best_ones_triage_evidence() -> None:
    predictions = pl.DataFrame(
        [
            ("m1", "en", "x", "PER", "Q2", 0.5, 0.1, "Q2"),
            ("m2", "en", "India , China and Peru", None, None, None, None, "NIL"),
        ],
        schema=SCHEMA,
        orient="row",
    )
    candidates = pl.DataFrame(
        {
            "mention_id": ["m1", "m1"],
            "rank": [1, 2],
            "kb_id": ["Q1", "Q2"],
            "score": [1.5, 0.7],
            "sources": [["prior"], ["fuzzy", "dense"]],
        },
        schema={
            "mention_id": pl.String,
            "rank": pl.Int32,
            "kb_id": pl.String,
            "score": pl.Float64,
            "sources": pl.List(pl.String),
        },
    )
    out = nil_classifier.add_evidence(predictions, candidates).sort("mention_id")
    first, second = out.row(0, named=True), out.row(1, named=True)
    # The ranker's best (Q2) was triage's rank 2, proposed by fuzzy and dense.
    assert (first["candidates"], first["best_triage_score"], first["best_triage_rank"]) == (2.0, 0.7, 2.0)
    assert (first["best_from_fuzzy"], first["best_from_dense"], first["best_from_prior"]) == (1.0, 1.0, 0.0)
    assert (second["candidates"], second["best_triage_score"], second["best_from_fuzzy"]) == (0.0, 0.0, 0.0)
    x = nil_classifier.feature_matrix(out.sort("mention_id"), ["PER"])
    # No candidate: has_candidate 0, best -2, second -2, margin 0; type PER only for m1.
    assert x[1, :4].tolist() == [0.0, -2.0, -2.0, 0.0] and x[:, -1].tolist() == [1.0, 0.0]
    words = nil_classifier.NUMERIC.index("mention_words")
    assert x[:, words].tolist() == pytest.approx(
        [np.log(2), np.log(6)]
    )  # 1 and 5 words (the comma is one) and x[:, comma].tolist() == [0.0, 1.0]


def test_classifier_separates_low_scored_nils_and_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    train = separable(60, seed=0)
    params = nil_classifier.fit(train)
    assert params["classes"] == ["nil", "right"] and params["fitted_on"] == {
        "mentions": 60,
        "nil": 20,
        "right": 40,
        "wrong": 0,
    }
    test = separable(30, seed=1)
    said = nil_classifier.says_nil(params, test)
    assert said.tolist() == (test["gold_kb_id"] == "NIL").to_list()
    # The numpy application equals scikit-learn's own probabilities.
    x = nil_classifier.feature_matrix(train, params["types"])
    mean, scale = np.asarray(params["mean"]), np.asarray(params["scale"])
    reference = LogisticRegression(C=nil_classifier.C, max_iter=2000).fit(
        (x - mean) / scale, nil_classifier.labels(train)
    )
    expected = reference.predict_proba((nil_classifier.feature_matrix(test, params["types"]) - mean) / scale)
    np.testing.assert_allclose(nil_classifier.probabilities(params, test)["nil"], expected[:, 0], atol=1e-6)
    with pytest.raises(ValueError):
        nil_classifier.fit(train.filter(pl.col("gold_kb_id") != "NIL"))


def test_decide_nil_applies_thresholds_or_the_classifier() -> None:
    table = evidence_table(
        [("a", "en", "Q1", 0.3, 0.0, "Q1"), ("b", "en", "Q2", -0.6, -0.7, "NIL"), ("c", "es", None, None, None, "NIL")]
    )
    artifact = {"method": "threshold", "thresholds": {"en": 0.5}, "default_threshold": -1.0, "classifier": None}
    assert decide_nil(table, artifact)["kb_id"].to_list() == ["NIL", "NIL", "NIL"]  # 0.3 < 0.5
    artifact["thresholds"] = {"en": -0.5}
    assert decide_nil(table, artifact)["kb_id"].to_list() == ["Q1", "NIL", "NIL"]
    artifact = {
        **artifact,
        "thresholds": {"en": -1.0},
        "method": "classifier",
        "classifier": nil_classifier.fit(separable(60, 0)),
    }
    decided = decide_nil(table, artifact)
    # The classifier overrides en's threshold -1 for b; c has no candidate.
    assert decided["kb_id"].to_list() == ["Q1", "NIL", "NIL"]
    # What decided is shown, never a threshold that contradicts is_nil (issue 21 item 12): the classifier's
    # P(NIL) and the cut it passes (P(right)), and no threshold.
    assert decided["threshold"].to_list() == [None, None, None]
    probability, cut = decided["nil_probability"].to_list(), decided["nil_cut"].to_list()
    assert probability[0] < cut[0] and probability[1] > cut[1]
    assert all(0.0 <= value <= 1.0 for value in probability + cut)


@pytest.mark.parametrize("method", ["threshold", "classifier", "nota"])
def test_the_decision_columns_never_contradict_is_nil(method: str) -> None:
    """With thresholds or nota, NIL exactly when best_score < threshold (nota's threshold is the NIL
    score); with the classifier, exactly when nil_probability > nil_cut (no candidate: NIL either way)."""
    rows = [
        (f"m{i}", "en", f"Q{i}", score, score - 0.1, "NIL" if score < 0 else f"Q{i}")
        for i, score in enumerate(np.linspace(-0.9, 0.9, 12).tolist())
    ] + [("none", "en", None, None, None, "NIL")]
    table = evidence_table(rows).with_columns(pl.Series("nil_score", [0.1] * 12 + [None], dtype=pl.Float64))
    artifact = {
        "method": method,
        "thresholds": {"en": -1.0 if method != "threshold" else 0.2},
        "default_threshold": -1.0,
        "classifier": nil_classifier.fit(separable(60, 0)) if method == "classifier" else None,
    }
    decided = decide_nil(table, artifact)
    has = decided["best_kb_id"].is_not_null()
    if method == "classifier":
        rule = decided["nil_probability"] > decided["nil_cut"]
        assert decided["threshold"].null_count() == decided.height
    else:
        rule = decided["best_score"] < decided["threshold"]
        assert decided["nil_probability"].null_count() == decided["nil_cut"].null_count() == decided.height
    assert decided.filter(has)["is_nil"].to_list() == rule.filter(has).to_list()
    assert 0 < decided["is_nil"].sum() < decided.height and decided.filter(~has)["is_nil"].to_list() == [True]


def test_choose_warns_about_thin_or_missing_dev_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    # it: one dev mention, linked to the wrong entity: wrong at every threshold, no evidence.
    wrong = evidence_table([("it1", "it", "Q1", 0.3, 0.1, "Q2")])
    tuning = pl.concat([separable(60, 0, "en"), separable(12, 1, "es"), wrong])
    with caplog.at_level(logging.WARNING):
        artifact, sweep_table, _, _ = nil_choice.choose(
            tuning, EvaluateConfig(nil_method="threshold", fixed_thresholds={"it": -0.7}), ["en", "es", "it", "ru"], 0
        )
    text = caplog.text
    assert "[W605] it: dev micro-average is the same at every NIL threshold" in text
    assert "evaluate.fixed_thresholds.it = -0.7" in text and artifact["thresholds"]["it"] == -0.7
    # ru has no dev mention: it falls back to the default threshold, and says so.
    assert "[W602] ru: no dev mention with gold" in text and "evaluate.default_threshold = -1.0" in text
    # es: 12 dev mentions with 4 NILs is too little to trust its threshold.
    assert "[W603] es: NIL threshold" in text and "rests on 12 dev mention(s) with 4 NIL(s)" in text
    assert "[W603] en" not in text and artifact["tuning_counts"] == {
        "en": {"mentions": 60, "nil": 20},
        "es": {"mentions": 12, "nil": 4},
        "it": {"mentions": 1, "nil": 0},
    }
    assert artifact["thresholds"]["ru"] == -1.0 and sweep_table is not None
    # Perfectly separable: both methods are perfect in cross-validation; auto keeps the classifier on a tie.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        artifact, _, validation, _ = nil_choice.choose(
            tuning, EvaluateConfig(nil_method="auto", fixed_thresholds={"it": -0.7}), ["en", "es", "it", "ru"], 0
        )
    overall = validation.filter(pl.col("lang") == "all")
    assert overall["micro_average"].to_list() == [72 / 73, 72 / 73] and artifact["method"] == "classifier"
    # The classifier decides: no warning about thresholds that decide nothing, one line saying they are left out.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "4 warning(s) about the per-language thresholds (W602, W603, W605) left out: they decide no NIL, the " in (
        caplog.text
    )
    assert "they decide no NIL, the classifier (NIL where" in caplog.text

    caplog.clear()
    few = separable(15, 0)  # 5 NILs: too few for the classifier
    with caplog.at_level(logging.WARNING):
        artifact, _, validation, variants = nil_choice.choose(few, EvaluateConfig(nil_method="classifier"), ["en"], 0)
    assert "[W604] the dev split has 5 NIL mention(s)" in caplog.text
    assert "so it is not fitted; NIL is decided by the per-language thresholds (NIL where" in caplog.text
    assert artifact["method"] == "threshold" and artifact["classifier"] is None and validation is None


def reader_columns(table: pl.DataFrame, nil_wins: list[bool]) -> pl.DataFrame:
    """`table` with the reader's columns: its best candidate the ranker's, NIL more probable where `nil_wins`."""
    return table.with_columns(
        pl.col("best_kb_id").alias("reader_kb_id"),
        pl.Series("reader_score", [0.3 if nil else 0.6 for nil in nil_wins], dtype=pl.Float64),
        pl.Series("reader_nil_score", [0.6 if nil else 0.3 for nil in nil_wins], dtype=pl.Float64),
    )


def test_warnings_agree_with_the_nil_method_in_force(caplog: pytest.LogCaptureFixture) -> None:
    """With too few dev NILs for the classifier and `auto` choosing the reader, W604 says the reader decides
    (before: "NIL thresholds decide instead", beside evaluate's "NIL decided by the reader"), and the
    thresholds' own warnings (W603 here) are not given, since no threshold decides."""
    few = separable(15, 0)  # 5 NILs, 15 dev mentions: too few for the classifier and for a trusted threshold
    gold_nil = (few["gold_kb_id"] == "NIL").to_list()
    tuning = reader_columns(few, gold_nil)  # the reader is right on every dev mention
    with caplog.at_level(logging.INFO):
        artifact, _, _, _ = nil_choice.choose(tuning, EvaluateConfig(nil_method="auto"), ["en"], 0)
    assert artifact["method"] == "reader"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[0] == (
        "[W604] the dev split has 5 NIL mention(s) with gold (or as few right links), fewer than the 10 the NIL "
        "classifier needs, so it is not fitted; NIL is decided by the reader (NIL where its NIL option is more "
        "probable than its best candidate, by more than the margin chosen on dev)"
    )
    # W606 names the method in force too; nothing else is warned of.
    assert len(warnings) == 2 and warnings[1].startswith("[W606] the NIL method reader was chosen by"), warnings
    assert "1 warning(s) about the per-language thresholds (W603) left out: they decide no NIL, the reader (" in (
        caplog.text
    )
    # Where thresholds decide, their warnings are given as before.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        nil_choice.choose(tuning, EvaluateConfig(nil_method="threshold"), ["en"], 0)
    assert "[W603] en: NIL threshold" in caplog.text and "[W604]" not in caplog.text


def test_the_reader_leaves_the_mentions_it_did_not_read_undecided() -> None:
    """The reader scores dev and test only: a training mention with candidates but no reader scores is not
    decided (is_nil, kb_id, system_id and the decision columns null), not NIL (before: every one NIL, with
    null probabilities). A mention without any candidate is NIL, as under every method."""
    rows = [
        ("read-nil", "en", "Q1", 0.5, 0.1, "NIL"),
        ("read-linked", "en", "Q2", 0.5, 0.1, "Q2"),
        ("not-read", "en", "Q3", 0.5, 0.1, "Q3"),
        ("no-candidate", "en", None, None, None, "NIL"),
    ]
    table = reader_columns(evidence_table(rows), [True, False, False, False]).with_columns(
        pl.when(pl.col("mention_id").is_in(["not-read", "no-candidate"])).then(None).otherwise(pl.col(name)).alias(name)
        for name in ("reader_kb_id", "reader_score", "reader_nil_score")
    )
    artifact = {"method": "reader", "thresholds": {"en": 0.0}, "default_threshold": -1.0, "classifier": None}
    decided = cluster_nils(decide_nil(table, artifact), "name")
    assert decided["is_nil"].to_list() == [True, False, None, True]
    assert decided["kb_id"].to_list() == ["NIL", "Q2", None, "NIL"]
    assert decided["system_id"].to_list()[2] is None
    assert decided["nil_probability"].to_list() == [0.6, 0.3, None, None]
    assert decided["nil_cut"].to_list() == [0.3, 0.6, None, None]
    assert decided["threshold"].null_count() == 4
    # Nor is the reader offered on mentions it did not read (a tuning split of training mentions).
    assert nil_choice.has_reader_scores(table.filter(pl.col("mention_id") != "not-read"))
    assert not nil_choice.has_reader_scores(table)


def test_a_nil_method_chosen_or_fitted_on_a_small_dev_split_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """W606 whenever what decides NIL was chosen by cross-validation or fitted on fewer dev mentions or NILs
    than W603's limits (50, 10) over all languages; before, auto picked a method (the reader, once) on 8 dev
    mentions with no word, and W603 spoke of thresholds only."""
    # 8 dev mentions with a NIL option: auto chooses between thresholds and nota on them (W604: no classifier).
    eight = separable(8, 0).with_columns(
        pl.Series("nil_score", [0.5 if i % 3 == 0 else -0.5 for i in range(8)], dtype=pl.Float64)
    )
    with caplog.at_level(logging.WARNING):
        artifact, _, validation, _ = nil_choice.choose(eight, EvaluateConfig(nil_method="auto"), ["en"], 0)
    assert validation is not None and artifact["method"] == "nota"
    assert (
        "[W606] the NIL method nota was chosen by a 5-fold cross-validation over 8 dev mention(s) with 3 NIL(s) "
        "(fewer than 50 mentions or 10 NILs), so it may not hold on other data; add dev mentions"
    ) in caplog.text
    assert 'evaluate.nil_method = "threshold" with threshold_mode = "fixed"' in caplog.text
    # 45 mentions, 15 NILs: enough NILs for the classifier (in every fold too), too few mentions to trust it.
    for method, how in (
        ("auto", "chosen by a 5-fold cross-validation over and fitted on"),
        ("classifier", "fitted on"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            artifact, *_ = nil_choice.choose(separable(45, 0), EvaluateConfig(nil_method=method), ["en"], 0)
        assert artifact["method"] == "classifier"
        assert f"[W606] the NIL method classifier was {how} 45 dev mention(s) with 15 NIL(s)" in caplog.text
    # Enough dev (90 mentions, 30 NILs), or a method that fits nothing on dev: no W606.
    for tuning, method in ((separable(90, 0), "auto"), (eight, "nota"), (separable(45, 0), "threshold")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            nil_choice.choose(tuning, EvaluateConfig(nil_method=method), ["en"], 0)
        assert "W606" not in caplog.text, (method, caplog.text)


def test_threshold_method_keeps_thresholds_and_still_fits_the_classifier_for_the_report() -> None:
    tuning = separable(90, 0)
    artifact, _, validation, variants = nil_choice.choose(tuning, EvaluateConfig(nil_method="threshold"), ["en"], 0)
    assert artifact["method"] == "threshold" and artifact["classifier"]["fitted_on"]["mentions"] == 90
    # Both methods, held out over all 90 mentions in five folds.
    assert validation.filter(pl.col("lang") == "all").select("method", "mentions").rows() == [
        ("threshold", 90),
        ("classifier", 90),
    ]
    # Every NIL scores under -0.4 and every link above 0.2: the threshold lies between them.
    assert -0.4 < artifact["thresholds"]["en"] <= 0.2


def test_outcome_scores_on_a_hand_made_case() -> None:
    decided = pl.DataFrame(
        {
            "lang": ["en", "en", "en", "en", "es"],
            "gold_kb_id": ["NIL", "NIL", "Q1", "Q2", "NIL"],
            "kb_id": ["NIL", "Q3", "NIL", "Q2", "Q1"],
        }
    )
    table = {row["lang"]: row for row in outcome_scores(decided).iter_rows(named=True)}
    # en: right = NIL/NIL and Q2/Q2 (2 of 4); said NIL 2, gold NIL 2, both 1 -> P = R = F1 = 0.5.
    assert table["en"]["micro_average"] == 0.5 and table["en"]["nil_f1"] == pytest.approx(0.5)
    # es: nothing said NIL: precision 0, recall 0, F1 0.
    assert (table["es"]["nil_precision"], table["es"]["nil_recall"], table["es"]["nil_f1"]) == (0.0, 0.0, 0.0)
    assert table["all"]["mentions"] == 5 and table["all"]["nil_recall"] == pytest.approx(1 / 3)


def test_error_analysis_on_a_hand_made_case() -> None:
    evaluated = pl.DataFrame(
        {
            "mention_id": ["m1", "m2", "m3", "m4", "m5", "m6"],
            "lang": ["en", "en", "en", "es", "es", "es"],
            "mention": ["Paris", "Obama", "Bush", "París", "Nadie", "Bush"],
            "entity_type": ["LOC", "PER", "PER", "LOC", None, "PER"],
            "gold_kb_id": ["Q1", "Q2", "Q3", "Q1", "NIL", "Q3"],
            "kb_id": ["Q1", "Q2", "Q4", "Q9", "NIL", "Q4"],
        }
    )
    candidates = pl.DataFrame(
        {
            "mention_id": ["m1", "m2", "m2", "m3", "m3", "m4", "m6"],
            "rank": [1, 2, 1, 7, 1, 1, 3],
            "kb_id": ["Q1", "Q2", "Q8", "Q3", "Q4", "Q9", "Q4"],
        }
    )
    names = pl.DataFrame(
        {"kb_id": ["Q1", "Q3", "Q4", "Q9"], "name": ["Paris", "George W. Bush", "George H. W. Bush", "Paris, Texas"]}
    )
    table, confusions = analyse(evaluated, candidates, seen_kb_ids=["Q1", "Q9"], names=names)

    def cell(analysis: str, group: str, lang: str = "all") -> tuple:
        row = table.filter((pl.col("analysis") == analysis) & (pl.col("group") == group) & (pl.col("lang") == lang))
        assert row.height == 1, (analysis, group, lang)
        return row["mentions"][0], row["correct"][0]

    assert cell("seen in training", "seen") == (2, 1)  # m1 right, m4 wrong
    assert cell("seen in training", "unseen") == (3, 1)  # m2 right; m3, m6 wrong
    assert cell("seen in training", "NIL gold") == (1, 1)
    # Gold rank: m1 1, m4 not found (Q1 not among its candidates), m2 2-5, m3 6-k, m6 not found.
    assert cell("triage rank", "1") == (1, 1) and cell("triage rank", "2-5") == (1, 1)
    assert cell("triage rank", "6-k") == (1, 0) and cell("triage rank", "not found") == (2, 0)
    assert cell("entity type", "unknown") == (1, 1) and cell("entity type", "PER", "en") == (2, 1)
    assert cell("language", "es", "es") == (3, 1)
    ceiling = table.filter((pl.col("analysis") == "triage ceiling") & (pl.col("lang") == "all")).row(0, named=True)
    assert ceiling["ceiling"] == pytest.approx(4 / 6) and ceiling["accuracy"] == pytest.approx(3 / 6)
    nil_es = table.filter((pl.col("analysis") == "NIL") & (pl.col("lang") == "es")).row(0, named=True)
    assert (nil_es["nil_precision"], nil_es["nil_recall"], nil_es["nil_f1"]) == (1.0, 1.0, 1.0)
    # Q3 -> Q4 twice (first example by mention id: "Bush"), Q1 -> Q9 once.
    # Entity names beside the KB ids (issue 21 item 16), in confusions.parquet and report.md.
    assert confusions.rows() == [
        ("Q3", "George W. Bush", "Q4", "George H. W. Bush", 2, "Bush"),
        ("Q1", "Paris", "Q9", "Paris, Texas", 1, "París"),
    ]
    assert "| Q3 (George W. Bush) | Q4 (George H. W. Bush) | 2 | Bush |" in markdown(table, confusions)
    assert analyse(evaluated, candidates, seen_kb_ids=[])[1]["gold_name"].to_list() == [None, None]


def test_tied_best_counts_mentions_whose_runner_up_has_the_best_score() -> None:
    from pipeline.model.ties import tied_best

    evaluated = pl.DataFrame(
        {"best_score": [1.0, 0.9, 0.5, None, 0.7], "second_score": [1.0, 0.2, 0.5 - 1e-9, None, None]},
        schema={"best_score": pl.Float64, "second_score": pl.Float64},
    )
    evaluated = evaluated.with_columns((pl.col("best_score") - pl.col("second_score")).alias("margin"))
    ties = tied_best(evaluated)
    # No candidate, or no runner-up: not counted; the tie at 1.0 is a saturated tanh, the one at 0.5 is not.
    assert ties == {"tied": 2, "mentions": 3, "share": 2 / 3, "saturated": 1}
    assert tied_best(evaluated.head(0)) == {"tied": 0, "mentions": 0, "share": 0.0, "saturated": 0}


def test_tie_advice_names_the_cause_the_tied_scores_point_to() -> None:
    """Ties near ±1 are a saturated ranker (retrain with a lower learning rate); ties below that are
    candidates the ranker cannot tell apart, as duplicate KB entities (check the KB)."""
    from pipeline.model.ties import tie_advice

    saturated = tie_advice({"tied": 5, "mentions": 8, "share": 5 / 8, "saturated": 5})
    assert saturated.startswith("5 of them tie near ±1") and "lower train.learning_rate" in saturated
    assert "duplicate" not in saturated
    duplicates = tie_advice({"tied": 5, "mentions": 8, "share": 5 / 8, "saturated": 0})
    assert duplicates.startswith("5 of them tie at |score| <= 0.99, as duplicate or near-identical KB entities")
    assert "check the KB" in duplicates and "learning_rate" not in duplicates
    both = tie_advice({"tied": 5, "mentions": 8, "share": 5 / 8, "saturated": 2})
    assert "2 of them tie near ±1" in both and "; 3 of them tie at |score| <= 0.99" in both


@pytest.mark.parametrize("method", ["threshold", "classifier", "nota", "reader"])
def test_the_summary_names_thresholds_only_where_they_decide(method: str) -> None:
    """evaluate's summary line lists the per-language thresholds only under the threshold method; under the
    classifier, nota or the reader it says what decided instead (issue 21: a reader-decided run listed them)."""
    from pipeline.model.nil import decided_by, thresholds_decide
    from pipeline.scoring.summary import nil_decision

    artifact = {"method": method, "thresholds": {"en": -0.5, "es": 0.25}, "default_threshold": -1.0}
    metrics = {
        "thresholds": artifact["thresholds"] if thresholds_decide(artifact) else None,
        "nil_decided_by": decided_by(artifact, reads_prior=method == "classifier"),
    }
    expected = {
        "threshold": "NIL thresholds en=-0.50, es=0.25; NIL decided by the thresholds",
        "classifier": "NIL decided by the classifier (NIL where its P(NIL) is over its P(best candidate right)), "
        "reading the mention NIL prior",
        "nota": "NIL decided by the ranker's NIL option, nota (NIL where its score is over the best candidate's)",
        "reader": "NIL decided by the reader (NIL where its NIL option is more probable than its best candidate, by more than the margin chosen on dev)",
    }
    assert nil_decision(metrics) == expected[method]


def _reader_predictions(margins: list[float], golds: list[str], reader_ids: list[str]) -> pl.DataFrame:
    """Predictions of mentions the reader read: its best candidate with probability 0.4 and its NIL option
    0.4 + margin."""
    return pl.DataFrame(
        {
            "lang": ["en"] * len(margins),
            "best_kb_id": ["Q1"] * len(margins),
            "best_score": [0.5] * len(margins),
            "gold_kb_id": golds,
            "reader_kb_id": reader_ids,
            "reader_score": [0.4] * len(margins),
            "reader_nil_score": [0.4 + m for m in margins],
        }
    )


def test_the_reader_nil_margin_is_chosen_on_tuning_mentions_and_applied() -> None:
    """The reader's NIL option said NIL too often (ambiguity set: NIL precision 0.44, recall 0.93): the margin
    it must win by is chosen on dev, as the ranker's thresholds are."""
    from pipeline.model.nil import decide_nil, reader_cut

    # Two NIL golds with margins 0.5 and 0.6; two right links the NIL option beats by 0.1 and 0.2; one clear link.
    tuning = _reader_predictions([0.5, 0.6, 0.1, 0.2, -0.3], ["NIL", "NIL", "Q1", "Q1", "Q1"], ["Q1"] * 5)
    cut = reader_cut(tuning)
    assert 0.2 < cut < 0.5 and cut == pytest.approx(0.35)
    artifact = {"method": "reader", "thresholds": {}, "default_threshold": 0.0, "classifier": None}
    assert decide_nil(tuning, artifact)["is_nil"].to_list() == [True, True, True, True, False]  # no cut: argmax
    decided = decide_nil(tuning, {**artifact, "reader_cut": cut})
    assert decided["is_nil"].to_list() == [True, True, False, False, False]
    assert decided["kb_id"].to_list() == ["NIL", "NIL", "Q1", "Q1", "Q1"]
    assert (decided["nil_probability"] > decided["nil_cut"]).to_list() == decided["is_nil"].to_list()
    # Already right at 0: the cut stays 0 (the nearest to 0 of the best); nothing read: 0.
    assert reader_cut(_reader_predictions([0.5, -0.2], ["NIL", "Q1"], ["Q1", "Q1"])) == 0.0
    assert reader_cut(_reader_predictions([0.5], ["NIL"], [None])) == 0.0
