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

import polars as pl

# Above this share of mentions (with a runner-up) whose best two candidates tie, evaluate and link warn.
TIED_SHARE_WARN = 0.2
# A tied best score beyond this magnitude is a saturated tanh; below it, the tie is the candidates' own.
SATURATED_SCORE = 0.99


def tied_best(decided: pl.DataFrame) -> dict:
    """How many mentions with a runner-up give it the best candidate's very score (|margin| <= 1e-6).

    `decided` needs best_score, second_score and margin (best - second), as evaluate's
    `predict` writes them. Returns {"tied", "mentions" (with a runner-up), "share", "saturated"
    (of the tied, those whose best score is beyond ±`SATURATED_SCORE`)} (share 0 with no such mention).
    """
    with_second = decided.filter(pl.col("second_score").is_not_null() & pl.col("best_score").is_not_null())
    tied = with_second.filter(pl.col("margin").abs() <= 1e-6)
    saturated = int((tied["best_score"].abs() > SATURATED_SCORE).sum())
    return {"tied": tied.height, "mentions": with_second.height,
            "share": tied.height / with_second.height if with_second.height else 0.0, "saturated": saturated}


def tie_advice(ties: dict) -> str:
    """What W502 and W703 say of the ties' cause and fix, from where the tied scores lie (`tied_best`)."""
    saturated = ties.get("saturated", 0)
    parts = []
    if saturated:
        parts.append(f"{saturated} of them tie near ±1 (|score| > {SATURATED_SCORE}), where the ranker's tanh "
                     "saturates: retrain with a lower train.learning_rate (docs/results.md: seed spread)")
    if ties["tied"] - saturated:
        parts.append(f"{ties['tied'] - saturated} of them tie at |score| <= {SATURATED_SCORE}, as duplicate or "
                     "near-identical KB entities (the same name and description under two ids) do, or a ranker "
                     "that scores every candidate alike: check the KB for such entities and merge or drop the "
                     "copies, or, if the KB has none, check the model's training (train/history.parquet)")
    return "; ".join(parts)
