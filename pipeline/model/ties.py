"""Ties between a mention's best two candidates: when the choice is triage's order, not the ranker's.

Two candidates get the same ranker score for one of three reasons: the ranker's tanh scores
saturate at ±1 (a model trained with too high a learning rate); the two are the same entity
to the ranker, duplicate or near-identical KB entries (one name and description under two
ids), which score alike anywhere, e.g. both -0.92; or the ranker scores every candidate alike
(a model that learned nothing). A tie keeps triage's order
(`candidate_order`), so such mentions link as triage ranks. evaluate (W502) and
`xel-cli link` (W703) count them with `tied_best` and warn above `TIED_SHARE_WARN`, with
`tie_advice` naming the cause the tied scores point to.
"""

from __future__ import annotations

import numpy as np
import polars as pl

# Above this share of mentions (with a runner-up) whose best two candidates tie, evaluate and link warn.
TIED_SHARE_WARN = 0.2
# A tied best score beyond this magnitude is a saturated tanh; below it, the tie is the candidates' own.
SATURATED_SCORE = 0.99
# Two scores this close are one score: the ranker cannot tell the candidates apart.
TIE_TOLERANCE = 1e-6


def tied_best(decided: pl.DataFrame) -> dict:
    """How many mentions with a runner-up give it the best candidate's very score (|margin| <= 1e-6).

    `decided` needs best_score, second_score and margin (best - second), as evaluate's
    `predict` writes them. Returns {"tied", "mentions" (with a runner-up), "share", "saturated"
    (of the tied, those whose best score is beyond ±`SATURATED_SCORE`)} (share 0 with no such mention).
    """
    with_second = decided.filter(pl.col("second_score").is_not_null() & pl.col("best_score").is_not_null())
    tied = with_second.filter(pl.col("margin").abs() <= TIE_TOLERANCE)
    saturated = int((tied["best_score"].abs() > SATURATED_SCORE).sum())
    return {
        "tied": tied.height,
        "mentions": with_second.height,
        "share": tied.height / with_second.height if with_second.height else 0.0,
        "saturated": saturated,
    }


def score_matrix_ties(scores: np.ndarray) -> dict:
    """`tied_best` of a score matrix, plus how many mentions get one score for every candidate.

    scores: (n_mentions, k) ranker scores, NaN where a mention has fewer than k candidates
    (as `features.score_candidates` returns them). Returns `tied_best`'s dict with "constant":
    of the mentions with a runner-up, those whose candidates all lie within `TIE_TOLERANCE` of
    their best (a ranker that scores every candidate alike), and "constant_score": the best
    score of the first such mention (None without one).
    """
    filled = np.where(np.isnan(scores), -np.inf, scores).astype(np.float64)
    if filled.shape[1] < 2:
        filled = np.concatenate([filled, np.full((filled.shape[0], 2 - filled.shape[1]), -np.inf)], axis=1)
    ordered = -np.sort(-filled, axis=1)  # (n, k), best first; padding (-inf) last
    best, second = ordered[:, 0], ordered[:, 1]
    has_second = np.isfinite(second)
    lowest = np.where(np.isnan(scores), np.inf, scores).min(axis=1, initial=np.inf)
    constant = has_second & (best - lowest <= TIE_TOLERANCE)
    decided = pl.DataFrame(
        {"best_score": np.where(np.isfinite(best), best, np.nan), "second_score": np.where(has_second, second, np.nan)}
    ).fill_nan(None)
    ties = tied_best(decided.with_columns((pl.col("best_score") - pl.col("second_score")).alias("margin")))
    return {
        **ties,
        "constant": int(constant.sum()),
        "constant_score": float(best[constant][0]) if constant.any() else None,
    }


def tie_advice(ties: dict) -> str:
    """What W502 and W703 say of the ties' cause and fix, from where the tied scores lie (`tied_best`)."""
    saturated = ties.get("saturated", 0)
    parts = []
    if saturated:
        parts.append(
            f"{saturated} of them tie near ±1 (|score| > {SATURATED_SCORE}), where the ranker's tanh "
            "saturates: retrain with a lower train.learning_rate (docs/results.md: seed spread)"
        )
    if ties["tied"] - saturated:
        parts.append(
            f"{ties['tied'] - saturated} of them tie at |score| <= {SATURATED_SCORE}, as duplicate or "
            "near-identical KB entities (the same name and description under two ids) do, or a ranker "
            "that scores every candidate alike: check the KB for such entities and merge or drop the "
            "copies, or, if the KB has none, check the model's training (train/history.parquet)"
        )
    return "; ".join(parts)
