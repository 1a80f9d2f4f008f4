"""Ties between a mention's best two candidates: when the choice is triage's order, not the ranker's.

A ranker whose tanh scores saturate at 1 gives many candidates the same score, and a tie keeps
triage's order (`candidate_order`), so such a model links as triage ranks. evaluate (W502) and
`xel-cli link` (W703) count them with `tied_best` and warn above `TIED_SHARE_WARN`.
"""

from __future__ import annotations

import polars as pl

# Above this share of mentions (with a runner-up) whose best two candidates tie, evaluate and link warn.
TIED_SHARE_WARN = 0.2


def tied_best(decided: pl.DataFrame) -> dict:
    """How many mentions with a runner-up give it the best candidate's very score (|margin| <= 1e-6).

    `decided` needs best_score, second_score and margin (best - second), as evaluate's
    `predict` writes them. Returns {"tied", "mentions" (with a runner-up), "share"} (share 0
    with no such mention).
    """
    with_second = decided.filter(pl.col("second_score").is_not_null() & pl.col("best_score").is_not_null())
    tied = int((with_second["margin"].abs() <= 1e-6).sum())
    return {"tied": tied, "mentions": with_second.height, "share": tied / with_second.height if with_second.height else 0.0}
