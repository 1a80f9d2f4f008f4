"""NIL decisions: per-language thresholds chosen on dev, the saved NIL artifact, NIL clustering.

The paper's rule: a mention is NIL when its best candidate scores under its language's
threshold, or it has no candidate at all. Thresholds are swept on the tuning split
(never test) to maximise KBP2010 micro-average: the share of mentions whose prediction
equals the gold, every NIL counting as equal. Where the best micro-average is reached
over a range of thresholds (a flat optimum: few dev NILs), the middle of the widest
such range is taken, not its lowest point, so the threshold does not sit on the edge
beyond which dev has no evidence.

`decide_nil` applies a saved NIL artifact (`nil.json`: the method, the thresholds and
the learned classifier's parameters, see `pipeline.model.nil_classifier`); evaluate writes it
and anything that links new mentions calls the same function.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.core import schema
from pipeline.core.textnorm import add_keys

# Sweep grid over the ranker's tanh range, plus the observed best scores themselves.
GRID = np.round(np.linspace(-1.0, 1.0, 201), 4)

# What decides NIL under each method of a NIL artifact (`decide_nil`), as evaluate's summary line,
# report.md and metrics.json say it. Only "threshold" reads the per-language thresholds.
DECIDED_BY = {
    "threshold": "the per-language thresholds (NIL where the best score is under its language's)",
    "classifier": "the classifier (NIL where its P(NIL) is over its P(best candidate right))",
    "nota": "the ranker's NIL option, nota (NIL where its score is over the best candidate's)",
    "reader": "the reader (NIL where its NIL option is more probable than its best candidate, by more than the margin chosen on dev)",
}


def thresholds_decide(artifact: dict) -> bool:
    """Whether a NIL artifact's per-language thresholds decide NIL (method "threshold"); the classifier,
    nota and the reader read none of them (`decide_nil`)."""
    return artifact["method"] == "threshold"


def decided_by(artifact: dict, reads_prior: bool = False) -> str:
    """What decides NIL under `artifact`, in words (`DECIDED_BY`); `reads_prior`: the classifier reads
    the mention NIL prior too."""
    return DECIDED_BY[artifact["method"]] + (", reading the mention NIL prior" if reads_prior else "")


def decide(predictions: pl.DataFrame, thresholds: dict[str, float], default: float) -> pl.DataFrame:
    """Add `threshold`, `is_nil` and `kb_id` (best candidate or NIL) to predictions.

    predictions needs: lang, best_kb_id (null without candidates), best_score.
    """
    table = pl.DataFrame(
        {"lang": list(thresholds), "threshold": list(thresholds.values())},
        schema={"lang": pl.String, "threshold": pl.Float64},
    )
    decided = predictions.join(table, on="lang", how="left").with_columns(pl.col("threshold").fill_null(default))
    is_nil = pl.col("best_kb_id").is_null() | (pl.col("best_score") < pl.col("threshold"))
    return decided.with_columns(
        is_nil.alias("is_nil"),
        pl.when(is_nil).then(pl.lit(schema.NIL_ID)).otherwise(pl.col("best_kb_id")).alias("kb_id"),
    )


def sweep(predictions: pl.DataFrame) -> pl.DataFrame:
    """Micro-average on the given (tuning) mentions per language for every candidate threshold.

    predictions needs: lang, best_kb_id, best_score, gold_kb_id. Returns
    (lang, threshold, micro_average), computed as one (thresholds x mentions) array.
    """
    rows = []
    for lang in sorted(predictions["lang"].unique().to_list()):
        part = predictions.filter((pl.col("lang") == lang) & pl.col("gold_kb_id").is_not_null())
        if part.is_empty():
            continue
        best_score = part["best_score"].fill_null(-np.inf).to_numpy()
        thresholds = np.unique(np.concatenate([GRID, best_score[np.isfinite(best_score)]]))
        linked_right = (part["best_kb_id"] == part["gold_kb_id"]).fill_null(False).to_numpy()
        gold_nil = (part["gold_kb_id"] == schema.NIL_ID).to_numpy()
        says_nil = best_score[None, :] < thresholds[:, None]  # (T, N)
        correct = np.where(says_nil, gold_nil[None, :], linked_right[None, :])
        rows.append(pl.DataFrame({"lang": lang, "threshold": thresholds, "micro_average": correct.mean(axis=1)}))
    if not rows:
        return pl.DataFrame(schema={"lang": pl.String, "threshold": pl.Float64, "micro_average": pl.Float64})
    return pl.concat(rows)


def best_thresholds(sweep_table: pl.DataFrame) -> dict[str, float]:
    """Per language, the middle of the widest run of swept thresholds that reach the best micro-average.

    A run is a stretch of consecutive swept thresholds (sorted) all at the language's
    maximum; its width is last - first threshold; the widest wins (the lowest on a tie)
    and its midpoint is returned, rounded to 4 decimals. Every threshold inside a run
    makes the same dev decisions as one of its points, so the midpoint keeps the best
    dev micro-average while staying away from the run's edges.
    """
    out = {}
    for lang in sorted(sweep_table["lang"].unique().to_list()):
        part = sweep_table.filter(pl.col("lang") == lang).sort("threshold")
        thresholds, micro = part["threshold"].to_numpy(), part["micro_average"].to_numpy()
        at_best = np.isclose(micro, micro.max(), rtol=0.0, atol=1e-12)
        # Runs of consecutive points at the maximum: (first index, last index).
        edges = np.diff(np.concatenate([[0], at_best.astype(np.int8), [0]]))
        starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1
        widths = thresholds[ends] - thresholds[starts]
        widest = int(np.argmax(widths))
        out[lang] = round(float((thresholds[starts[widest]] + thresholds[ends[widest]]) / 2), 4)
    return out


def tuning_counts(tuning: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Per language, the tuning mentions with gold and how many of them are NIL: {lang: {mentions, nil}}."""
    with_gold = tuning.filter(pl.col("gold_kb_id").is_not_null())
    counts = (
        with_gold.group_by("lang")
        .agg(
            pl.len().alias("mentions"),  # sorted below: nil.json byte-stable
            (pl.col("gold_kb_id") == schema.NIL_ID).sum().alias("nil"),
        )
        .sort("lang")
    )
    return {
        row["lang"]: {"mentions": int(row["mentions"]), "nil": int(row["nil"])} for row in counts.iter_rows(named=True)
    }


def says_nil_by_nota(predictions: pl.DataFrame) -> np.ndarray:
    """(n,) bool: the ranker's NIL option (ReFinED's "none of the above") beats the best candidate.

    predictions needs best_kb_id, best_score and nil_score (`Ranker.nil_scores`, in the
    candidates' [-1, 1] range); NIL where nil_score > best_score or there is no candidate.
    Raises ValueError without a nil_score column (a ranker trained without the NIL option).
    """
    if "nil_score" not in predictions.columns:
        raise ValueError("the nota NIL method needs the ranker's NIL scores; train with train.nil_candidate = true")
    no_candidate = predictions["best_kb_id"].is_null().to_numpy()
    beaten = (predictions["nil_score"] > predictions["best_score"]).fill_null(False).to_numpy()
    return no_candidate | beaten


def reader_cut(tuning: pl.DataFrame) -> float:
    """The NIL margin of the reader chosen on tuning mentions with gold: the cut `c` for which "NIL when the
    NIL option's probability exceeds the best candidate's by more than c" (`says_nil_by_reader`) gets the
    most of the mentions it read right (a NIL gold said NIL, a linked gold linked to it); 0, the argmax of
    its softmax, when it read none, and the cut nearest 0 among equal ones.

    Why: trained with NIL examples in every batch (`rerank.nil_hidden_share` of hidden golds, and the
    NIL mentions), the reader's NIL option can be more or less eager than the tuning split asks; the
    ranker's NIL thresholds are tuned on it the same way. tuning needs gold_kb_id, reader_kb_id,
    reader_score and reader_nil_score (probabilities in [0, 1]); the result lies in [-1, 1].
    """
    read = tuning.filter(pl.col("reader_kb_id").is_not_null() & pl.col("gold_kb_id").is_not_null())
    if read.is_empty():
        return 0.0
    margin = (read["reader_nil_score"] - read["reader_score"]).cast(pl.Float64).to_numpy()
    gold_nil = (read["gold_kb_id"] == schema.NIL_ID).to_numpy()
    linked_right = (read["reader_kb_id"] == read["gold_kb_id"]).to_numpy()
    values = np.unique(margin)
    cuts = np.unique(np.concatenate([[0.0], (values[:-1] + values[1:]) / 2, [values[0] - 1e-9, values[-1]]]))
    cuts = np.clip(cuts, -1.0, 1.0)
    says_nil = margin[None, :] > cuts[:, None]
    right = np.where(gold_nil[None, :], says_nil, linked_right[None, :] & ~says_nil).sum(axis=1)
    best = np.flatnonzero(right == right.max())
    return float(cuts[best[np.argmin(np.abs(cuts[best]))]])


def says_nil_by_reader(predictions: pl.DataFrame, cut: float = 0.0) -> pl.Series:
    """(n,) Boolean `is_nil`: True where the reader's learned NIL option beats its most probable candidate
    by more than `cut` (`reader_cut`; 0: simply beats it), or the mention has no candidate at all (nothing to read, so NIL, as under every method); null where
    the mention has candidates the reader did not read, so it did not decide it: the rerank stage scores
    only dev and test mentions, not the training split's (docs/nil.md).

    predictions needs best_kb_id (the ranker's, null without candidates) and reader_kb_id, reader_score
    and reader_nil_score (`reader.reader_predictions`; null for a mention the reader did not read).
    Raises ValueError without them.
    """
    if "reader_kb_id" not in predictions.columns:
        raise ValueError("the reader NIL method needs the reader's scores; run with rerank.enabled = true")
    read = pl.col("reader_kb_id").is_not_null()
    beaten = (pl.col("reader_nil_score") - pl.col("reader_score") > cut).fill_null(False)
    decision = (
        pl.when(read).then(beaten).when(pl.col("best_kb_id").is_null()).then(pl.lit(True)).otherwise(pl.lit(None))
    )
    return predictions.select(decision.cast(pl.Boolean).alias("is_nil")).to_series()


def decide_nil(predictions: pl.DataFrame, artifact: dict) -> pl.DataFrame:
    """Apply a saved NIL artifact: add `threshold`, `nil_probability`, `nil_cut`, `is_nil` and `kb_id`
    (best candidate or NIL).

    artifact (`nil.json`): {"method": "threshold" | "classifier" | "nota" | "reader", "thresholds": {lang:
    value}, "default_threshold": value, "classifier": parameters of
    `nil_classifier.fit` or null}. predictions needs lang, best_kb_id (null without
    candidates), best_score; with the classifier also the evidence columns of
    `nil_classifier.add_evidence` (and entity_type when the classifier uses types); with
    nota, nil_score (`says_nil_by_nota`); with reader, the reader's columns (`says_nil_by_reader`:
    its best candidate, not the ranker's, is then linked; a mention it did not read, of the training
    split, is not decided: is_nil, kb_id and the decision columns are null).

    The columns say what decided, so none contradicts `is_nil`: with thresholds, `threshold` is the
    language's and a mention with a candidate is NIL when best_score < threshold; with nota,
    `threshold` is the ranker's NIL score, the same rule; with the classifier, `threshold` is null,
    `nil_probability` is the classifier's P(NIL) and `nil_cut` its P(right): NIL when
    nil_probability > nil_cut; with the reader likewise, its NIL option's probability and its best
    candidate's. The two are null unless the classifier or the reader decides.
    """
    decided = decide(predictions, artifact["thresholds"], artifact["default_threshold"])
    no_probability = pl.lit(None, pl.Float64)
    probability, cut = no_probability.alias("nil_probability"), no_probability.alias("nil_cut")
    if artifact["method"] == "reader":  # the reader's own best candidate, not the ranker's
        cut = float(artifact.get("reader_cut") or 0.0)  # models before the cut have none: 0
        is_nil = says_nil_by_reader(predictions, cut)
        return decided.with_columns(
            pl.lit(None, pl.Float64).alias("threshold"),
            pl.col("reader_nil_score").alias("nil_probability"),
            (pl.col("reader_score") + cut).alias(
                "nil_cut"
            ),  # NIL when nil_probability > nil_cut, as for the classifier
            is_nil,
            pl.when(is_nil).then(pl.lit(schema.NIL_ID)).otherwise(pl.col("reader_kb_id")).alias("kb_id"),
        )
    if artifact["method"] == "nota":
        is_nil = pl.Series("is_nil", says_nil_by_nota(predictions))
        threshold = pl.col("nil_score").cast(pl.Float64).alias("threshold")  # what the best score had to reach
    elif artifact["method"] == "classifier":
        from pipeline.model.nil_classifier import decision

        nil_probability, nil_cut, says_nil = decision(artifact["classifier"], predictions)
        is_nil = pl.Series("is_nil", says_nil)
        threshold = pl.lit(None, pl.Float64).alias("threshold")
        probability, cut = pl.Series("nil_probability", nil_probability), pl.Series("nil_cut", nil_cut)
    else:
        return decided.with_columns(probability, cut)
    return decided.with_columns(
        threshold,
        probability,
        cut,
        is_nil,
        pl.when(is_nil).then(pl.lit(schema.NIL_ID)).otherwise(pl.col("best_kb_id")).alias("kb_id"),
    )


def cluster_nils(decided: pl.DataFrame, mode: str) -> pl.DataFrame:
    """Give NIL mentions cluster ids: by folded mention string across documents, or one each.

    A mention whose folded string is empty is a cluster of its own in either mode.
    """
    if mode == "singleton":
        nil_key = pl.col("mention_id")
    else:
        decided = add_keys(decided, "mention")
        # A mention whose folded string is empty (`--`, `...`) names nothing: a cluster of its own.
        # The prefixes keep the two kinds of key apart.
        nil_key = (
            pl.when(pl.col("mention_fold") == "")
            .then(pl.concat_str(pl.lit("id:"), pl.col("mention_id")))
            .otherwise(pl.concat_str(pl.lit("key:"), pl.col("mention_fold")))
        )
    cluster = nil_key.rank("dense").over(pl.col("is_nil"))
    nil_id = pl.concat_str(pl.lit(schema.NIL_ID), cluster.cast(pl.String).str.zfill(5))
    out = decided.with_columns(pl.when(pl.col("is_nil")).then(nil_id).otherwise(pl.col("kb_id")).alias("system_id"))
    return out.drop("mention_fold", "mention_roman", strict=False)
