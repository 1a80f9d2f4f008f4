"""NIL decisions: per-language thresholds chosen on dev, and NIL clustering.

A mention is NIL when its best candidate scores under its language's threshold, or it
has no candidate at all. Thresholds are swept on the tuning split (never test) to
maximise KBP2010 micro-average: the share of mentions whose prediction equals the gold,
every NIL counting as equal.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline import schema
from pipeline.textnorm import add_keys

# Sweep grid over the ranker's tanh range, plus the observed best scores themselves.
GRID = np.round(np.linspace(-1.0, 1.0, 201), 4)


def decide(predictions: pl.DataFrame, thresholds: dict[str, float], default: float) -> pl.DataFrame:
    """Add `threshold`, `is_nil` and `kb_id` (best candidate or NIL) to predictions.

    predictions needs: lang, best_kb_id (null without candidates), best_score.
    """
    table = pl.DataFrame({"lang": list(thresholds), "threshold": list(thresholds.values())},
                         schema={"lang": pl.String, "threshold": pl.Float64})
    decided = predictions.join(table, on="lang", how="left").with_columns(pl.col("threshold").fill_null(default))
    is_nil = pl.col("best_kb_id").is_null() | (pl.col("best_score") < pl.col("threshold"))
    return decided.with_columns(is_nil.alias("is_nil"),
                                pl.when(is_nil).then(pl.lit(schema.NIL_ID)).otherwise(pl.col("best_kb_id")).alias("kb_id"))


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
    """Per language, the lowest threshold that reaches the best micro-average."""
    best = (sweep_table.sort("lang", "threshold")
            .filter(pl.col("micro_average") == pl.col("micro_average").max().over("lang"))
            .group_by("lang").agg(pl.col("threshold").first()))
    return dict(zip(best["lang"].to_list(), best["threshold"].to_list()))


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
        nil_key = (pl.when(pl.col("mention_fold") == "").then(pl.concat_str(pl.lit("id:"), pl.col("mention_id")))
                   .otherwise(pl.concat_str(pl.lit("key:"), pl.col("mention_fold"))))
    cluster = nil_key.rank("dense").over(pl.col("is_nil"))
    nil_id = pl.concat_str(pl.lit(schema.NIL_ID), cluster.cast(pl.String).str.zfill(5))
    out = decided.with_columns(pl.when(pl.col("is_nil")).then(nil_id).otherwise(pl.col("kb_id")).alias("system_id"))
    return out.drop("mention_fold", "mention_roman", strict=False)
