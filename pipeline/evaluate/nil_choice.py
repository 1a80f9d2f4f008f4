"""Choose the NIL decision on the tuning split: thresholds, the learned classifier, or the better of both.

`choose` builds the NIL artifact evaluate saves (`nil.json`, applied by
`pipeline.model.nil.decide_nil`):
- per-language thresholds (swept on dev, or fixed from config), with a coded warning
  for a language whose threshold rests on too few dev mentions or NILs and for one
  that has none (saying which fallback it gets);
- the classifier of `pipeline.model.nil_classifier`, fitted on all dev mentions when dev has
  enough NILs; when the predictions carry the mention NIL prior (`mention_nil_logit`,
  `pipeline.model.mention_prior`), it reads it only if that variant ("classifier+prior")
  beats the one without in the cross-validation below;
- "nota" (when the ranker has a NIL option, ReFinED's "none of the above", so the
  predictions carry `nil_score`): NIL when that score beats the best candidate's; it has
  nothing fitted on dev, so its held-out dev score is its plain dev score;
- "reader" (when the run has the rerank stage's reader, `pipeline.model.reader`): the reader's
  most probable candidate, NIL when its learned NIL option is more probable by more than a
  margin chosen on dev (`nil.reader_cut`; 0 is the plain argmax);
- the method: `evaluate.nil_method`, where "auto" takes the one with the best
  micro-average in a 5-fold cross-validation over dev (each fold's thresholds and
  classifier fitted on the other four folds, so neither is scored on what it saw).
Test is never read here.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from pipeline.core.config import EvaluateConfig
from pipeline.core.errors import ConfigError, warn
from pipeline.evaluate.error_analysis import outcome_scores
from pipeline.model import mention_prior, nil_classifier
from pipeline.model.nil import (
    best_thresholds,
    decide_nil,
    decided_by,
    reader_cut,
    sweep,
    thresholds_decide,
    tuning_counts,
)

logger = logging.getLogger(__name__)

# A threshold swept on fewer dev mentions or NILs than these is warned about (W603), and so is a NIL
# method chosen by cross-validation or a classifier fitted on fewer over all languages (W606).
MIN_TUNING_MENTIONS = 50
MIN_TUNING_NILS = 10
# The classifier is fitted only with at least this many dev NILs and right links (else W604).
MIN_CLASSIFIER_EXAMPLES = 10
FOLDS = 5
# The mention NIL prior's column (`pipeline.model.mention_prior`) and the classifier that reads it,
# as the cross-validation table names it.
PRIOR_COLUMN = mention_prior.COLUMN
PRIOR_VARIANT = "classifier+prior"


def thresholds_for(
    tuning: pl.DataFrame, evaluate: EvaluateConfig, languages: list[str], notes: list | None = None
) -> tuple[dict[str, float], pl.DataFrame | None]:
    """(threshold per language of `languages`, the sweep table or None when fixed).

    Swept languages get `best_thresholds`; the others the fixed value of their language
    or `default_threshold`, with warning W602 or W605 appended to `notes` as (code, fields)
    (none without `notes`, as in cross-validation folds): `choose` says them once it knows
    whether thresholds decide.
    """
    sweep_table, thresholds, flat = None, {}, set()
    if evaluate.threshold_mode == "dev":
        sweep_table = sweep(tuning)
        thresholds = best_thresholds(sweep_table)
        # A sweep equal at every threshold holds no evidence (e.g. every dev mention is
        # wrongly linked whatever the threshold): that language falls back as one without dev.
        spread = sweep_table.group_by("lang").agg(
            (pl.col("micro_average").max() - pl.col("micro_average").min()).alias("d")
        )
        flat = set(spread.filter(pl.col("d") <= 1e-12)["lang"].to_list())
        thresholds = {lang: value for lang, value in thresholds.items() if lang not in flat}
    for lang in sorted(languages):
        if lang in thresholds:
            continue
        if evaluate.fixed_thresholds.get(lang) is not None:
            value, fallback = evaluate.fixed_thresholds[lang], f"evaluate.fixed_thresholds.{lang}"
        else:
            value, fallback = evaluate.default_threshold, "evaluate.default_threshold"
        thresholds[lang] = value
        if evaluate.threshold_mode == "dev" and notes is not None:
            code = "W605" if lang in flat else "W602"
            notes.append((code, {"lang": lang, "split": evaluate.tune_split, "fallback": fallback, "value": value}))
    return thresholds, sweep_table


def thin_thresholds(counts: dict[str, dict[str, int]], thresholds: dict[str, float], split: str) -> list:
    """W603 as (code, fields) for each swept language whose dev counts are under MIN_TUNING_MENTIONS /
    MIN_TUNING_NILS."""
    return [
        (
            "W603",
            {
                "lang": lang,
                "value": thresholds[lang],
                "mentions": count["mentions"],
                "nils": count["nil"],
                "split": split,
                "min_mentions": MIN_TUNING_MENTIONS,
                "min_nils": MIN_TUNING_NILS,
            },
        )
        for lang, count in sorted(counts.items())
        if count["mentions"] < MIN_TUNING_MENTIONS or count["nil"] < MIN_TUNING_NILS
    ]


# The warnings about the thresholds themselves: said only where the thresholds decide NIL.
THRESHOLD_WARNINGS = ("W602", "W603", "W605")


def say_notes(notes: list, artifact: dict) -> None:
    """Log the warnings `choose` gathered, once the NIL method in force (`artifact`) is known, so none
    contradicts it: those about the thresholds (`THRESHOLD_WARNINGS`) only when they decide (else one info
    line says they were left out), W604 naming what decides instead of the classifier."""
    decider, thresholds_count = decided_by(artifact), thresholds_decide(artifact)
    skipped = [code for code, _ in notes if code in THRESHOLD_WARNINGS and not thresholds_count]
    for code, fields in notes:
        if code not in THRESHOLD_WARNINGS or thresholds_count:
            warn(logger, code, **({**fields, "decider": decider} if code == "W604" else fields))
    if skipped:
        logger.info(
            "%d warning(s) about the per-language thresholds (%s) left out: they decide no NIL, %s does; "
            "report.md lists each threshold with the dev mentions it rests on",
            len(skipped),
            ", ".join(sorted(set(skipped))),
            decider,
        )


def has_nil_scores(predictions: pl.DataFrame) -> bool:
    """Whether the predictions carry the ranker's NIL scores (`nil_score`), which the nota method needs."""
    return "nil_score" in predictions.columns and predictions["nil_score"].null_count() < predictions.height


def has_reader_scores(predictions: pl.DataFrame) -> bool:
    """Whether the reader decides these mentions: the predictions carry its columns (`reader_kb_id`, ...: a run
    with rerank.enabled) and it read every one with a candidate (it reads dev and test, not the training split)."""
    if "reader_nil_score" not in predictions.columns:
        return False
    return not (predictions["best_kb_id"].is_not_null() & predictions["reader_kb_id"].is_null()).any()


def classifier_ready(tuning: pl.DataFrame) -> bool:
    y = nil_classifier.labels(tuning.filter(pl.col("gold_kb_id").is_not_null()))
    return bool(
        (y == nil_classifier.NIL).sum() >= MIN_CLASSIFIER_EXAMPLES
        and (y == nil_classifier.RIGHT).sum() >= MIN_CLASSIFIER_EXAMPLES
    )


def cross_validate(tuning: pl.DataFrame, evaluate: EvaluateConfig, seed: int) -> pl.DataFrame:
    """Held-out dev scores of each method: (method, lang, mentions, micro_average, nil_precision, nil_recall, nil_f1).

    5 folds stratified by class (NIL / right / wrong) with numpy's seeded generator; the
    held-out decisions of all folds are pooled, then scored per language and over all.
    nota (with NIL scores) fits nothing, so its pooled folds are all of dev decided by it.
    """
    tuning = tuning.filter(pl.col("gold_kb_id").is_not_null())
    y = nil_classifier.labels(tuning)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        members = rng.permutation(np.nonzero(y == label)[0])
        fold[members] = np.arange(len(members)) % FOLDS
    tuning = tuning.with_columns(pl.Series("fold", fold))
    languages = tuning["lang"].unique().to_list()
    decided = {"threshold": [], "classifier": [], PRIOR_VARIANT: [], "nota": [], "reader": []}
    with_prior = PRIOR_COLUMN in tuning.columns
    held_folds = 0
    for k in range(FOLDS):
        fit_part, held = tuning.filter(pl.col("fold") != k), tuning.filter(pl.col("fold") == k)
        if held.is_empty():
            continue
        held_folds += 1
        thresholds, _ = thresholds_for(fit_part, evaluate, languages)
        artifact = {
            "method": "threshold",
            "thresholds": thresholds,
            "default_threshold": evaluate.default_threshold,
            "classifier": None,
        }
        decided["threshold"].append(decide_nil(held, artifact))
        if classifier_ready(fit_part):
            artifact = {
                **artifact,
                "method": "classifier",
                "classifier": nil_classifier.fit(without_prior(fit_part), seed),
            }
            decided["classifier"].append(decide_nil(held, artifact))
            if with_prior:
                variant = {**artifact, "classifier": nil_classifier.fit(fit_part, seed)}
                decided[PRIOR_VARIANT].append(decide_nil(held, variant))
        if has_nil_scores(held):
            decided["nota"].append(decide_nil(held, {**artifact, "method": "nota"}))
        if has_reader_scores(held):
            reader = {**artifact, "method": "reader", "reader_cut": reader_cut(fit_part)}
            decided["reader"].append(decide_nil(held, reader))
    tables = [
        outcome_scores(pl.concat(parts)).with_columns(pl.lit(method).alias("method"))
        for method, parts in decided.items()
        if parts and len(parts) == held_folds
    ]
    return pl.concat(tables).select("method", pl.exclude("method"))


def choose(
    tuning: pl.DataFrame, evaluate: EvaluateConfig, languages: list[str], seed: int
) -> tuple[dict, pl.DataFrame | None, pl.DataFrame | None, dict[str, dict]]:
    """(NIL artifact, sweep table or None, cross-validation table or None, classifier variants) from the
    tuning split's predictions. The variants ({"classifier": ..., "classifier+prior": ...}, the
    fitted ones) let the report score each on the evaluation split; the artifact holds the chosen one.
    Its warnings (W602-W605) are said once the method is chosen (`say_notes`).

    tuning: predictions of the tuning split with gold_kb_id and the evidence of
    `nil_classifier.add_evidence`; languages: every language that will be decided.
    """
    notes: list = []
    chosen = _choose(tuning.filter(pl.col("gold_kb_id").is_not_null()), evaluate, languages, seed, notes)
    say_notes(notes, chosen[0])
    return chosen


def _choose(
    tuning: pl.DataFrame, evaluate: EvaluateConfig, languages: list[str], seed: int, notes: list
) -> tuple[dict, pl.DataFrame | None, pl.DataFrame | None, dict[str, dict]]:
    """`choose`'s work on the tuning mentions with gold; its warnings appended to `notes`."""
    thresholds, sweep_table = thresholds_for(tuning, evaluate, languages, notes)
    counts = tuning_counts(tuning)
    if evaluate.threshold_mode == "dev":
        notes += thin_thresholds(counts, thresholds, evaluate.tune_split)
    artifact = {
        "method": "threshold",
        "thresholds": thresholds,
        "default_threshold": evaluate.default_threshold,
        "classifier": None,
        "tuning_counts": counts,
        "tune_split": evaluate.tune_split,
    }
    nota, reader = has_nil_scores(tuning), has_reader_scores(tuning)
    if reader:
        artifact["reader_cut"] = reader_cut(tuning)
    if evaluate.nil_method == "nota" and not nota:
        raise ConfigError(
            "E203",
            where="[evaluate]",
            field="nil_method",
            value="nota",
            reason="the model has no NIL option; train it with train.nil_candidate = true, "
            "or use threshold, classifier or auto",
        )
    if tuning.is_empty():
        artifact["method"] = evaluate.nil_method if evaluate.nil_method in ("nota", "reader") else "threshold"
        return artifact, sweep_table, None, {}
    variants = _fitted_classifiers(tuning, evaluate, seed, notes)
    artifact["classifier"] = variants.get("classifier")
    if artifact["classifier"] is None and not nota and not reader:
        return artifact, sweep_table, None, variants
    validation = cross_validate(tuning, evaluate, seed)
    artifact["classifier"], artifact["method"] = _chosen(evaluate.nil_method, validation, variants)
    notes += thin_choice(tuning, evaluate, artifact["method"])
    return artifact, sweep_table, validation, variants


def thin_choice(tuning: pl.DataFrame, evaluate: EvaluateConfig, method: str) -> list:
    """W606 as (code, fields) when what decides NIL was chosen or fitted on a tuning split (all languages, with
    gold) of fewer than MIN_TUNING_MENTIONS mentions or MIN_TUNING_NILS NILs, W603's limits: a method `auto`
    picked by cross-validation (on 8 dev mentions it once picked the reader), or the classifier fitted there.
    Thresholds have W603 per language; nota, chosen by the user, fits nothing on dev."""
    fitted = method in ("classifier", "reader")  # the classifier, or the reader's NIL margin
    if evaluate.nil_method == "auto":
        how = "chosen by a 5-fold cross-validation over" + (" and fitted on" if fitted else "")
    elif fitted:
        how = "fitted on"
    else:
        return []
    mentions = tuning.height
    nils = int((nil_classifier.labels(tuning) == nil_classifier.NIL).sum())
    if mentions >= MIN_TUNING_MENTIONS and nils >= MIN_TUNING_NILS:
        return []
    fields = {"method": method, "how": how, "mentions": mentions, "nils": nils, "split": evaluate.tune_split}
    return [("W606", {**fields, "min_mentions": MIN_TUNING_MENTIONS, "min_nils": MIN_TUNING_NILS})]


def _fitted_classifiers(tuning: pl.DataFrame, evaluate: EvaluateConfig, seed: int, notes: list) -> dict[str, dict]:
    """The NIL classifier fitted on the tuning split, without the mention prior ("classifier") and, where
    the predictions carry it, with it (`PRIOR_VARIANT`); fitted whatever the method, so the report can set
    the methods side by side. None where the split has too few NILs (W604 in `notes` when the method
    wants one)."""
    variants = {}
    if classifier_ready(tuning):
        variants["classifier"] = nil_classifier.fit(without_prior(tuning), seed)
        if PRIOR_COLUMN in tuning.columns:
            variants[PRIOR_VARIANT] = nil_classifier.fit(tuning, seed)
    elif evaluate.nil_method in ("classifier", "auto"):
        nils = int((nil_classifier.labels(tuning) == nil_classifier.NIL).sum())
        notes.append(("W604", {"split": evaluate.tune_split, "nils": nils, "minimum": MIN_CLASSIFIER_EXAMPLES}))
    return variants


def _chosen(nil_method: str, validation: pl.DataFrame, variants: dict[str, dict]) -> tuple[dict | None, str]:
    """(the classifier the artifact keeps, the NIL method) by the cross-validation's micro-average over all
    languages: the prior variant where it beats the classifier without it; for `nil_method` auto, the best
    method."""
    overall = {
        row["method"]: row["micro_average"] for row in validation.filter(pl.col("lang") == "all").iter_rows(named=True)
    }
    classifier = variants.get("classifier")
    if overall.get(PRIOR_VARIANT, -1.0) > overall.get("classifier", -1.0):
        # The prior is evidence, not a method: the classifier reads it when dev says it helps.
        classifier = variants[PRIOR_VARIANT]
    method = nil_method
    if method == "classifier" and classifier is None:
        method = "threshold"  # W604 said so
    if method == "auto":
        # The best held-out dev micro-average; on a tie the later of threshold, classifier, nota, reader.
        overall["classifier"] = max(overall.get("classifier", -1.0), overall.get(PRIOR_VARIANT, -1.0))
        methods = ("threshold", "classifier", "nota", "reader")
        method = max(methods, key=lambda m: (overall.get(m, -1.0), methods.index(m)))
    return classifier, method


def without_prior(predictions: pl.DataFrame) -> pl.DataFrame:
    """The predictions without the mention NIL prior, which the classifier then does not read."""
    return predictions.drop(PRIOR_COLUMN, strict=False)
