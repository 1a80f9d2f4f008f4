"""The ranker's prediction per mention from its candidates' scores: best, runner-up, margin.

Evaluate and `xel-cli link` both call `predict`, so they rank the same way; the NIL
decision then reads these columns (`pipeline.model.nil`, `nil_policy`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

# §7.2 re-ranks the ranker's ten best candidates.
POPULARITY_TOP = 10


def candidate_order(
    scores: np.ndarray, matrix: np.ndarray, popularity: np.ndarray | None = None, top: int = POPULARITY_TOP
) -> np.ndarray:
    """Column order (n_mentions, k) of each mention's candidates, best first.

    By ranker score (NaN, i.e. padding, last; ties keep triage rank order). With
    `popularity` (training-gold count per entity row), the paper's re-ranking (§7.2):
    the `top` best-scored candidates are stably re-sorted by popularity, most frequent
    first, so equally popular ones (e.g. all never seen in training) keep score order;
    candidates below the top stay where they were. The NIL threshold then applies to
    the new first candidate's own ranker score.
    """
    filled = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-filled, axis=1, kind="stable")
    if popularity is None:
        return order
    head = order[:, :top]
    entities = np.take_along_axis(matrix, head, axis=1)
    counts = np.where(entities >= 0, popularity[entities.clip(min=0)], -1)  # padding sorts last
    resorted = np.take_along_axis(head, np.argsort(-counts, axis=1, kind="stable"), axis=1)
    return np.concatenate([resorted, order[:, top:]], axis=1)


def predict(
    mentions: pl.DataFrame,
    rows: np.ndarray,
    matrix: np.ndarray,
    scores: np.ndarray,
    entity_ids: list[str],
    popularity: np.ndarray | None = None,
    nil_scores: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(scores table, predictions table) from a (n_mentions, k) score array.

    Predictions hold the best and runner-up KB ids and scores and the margin between
    them, in `candidate_order` (popularity re-ranked when `popularity` is given); a
    mention without candidates has a null best. `nil_scores` ((n_mentions,), the ranker's
    NIL option, `features.score_nil`) adds a `nil_score` column, which the "nota" NIL
    method and the classifier read.
    """
    ids = np.asarray(entity_ids + [None], dtype=object)  # row -1 (no candidate) is None
    mention_ids = mentions["mention_id"].to_numpy()[rows]
    predictions = _best_two(mention_ids, matrix, scores, ids, popularity)
    if nil_scores is not None:
        predictions = predictions.with_columns(pl.Series("nil_score", nil_scores, dtype=pl.Float64))
    return _score_table(mention_ids, matrix, scores, ids), predictions


def _best_two(
    mention_ids: np.ndarray, matrix: np.ndarray, scores: np.ndarray, ids: np.ndarray, popularity: np.ndarray | None
) -> pl.DataFrame:
    """Each mention's best and runner-up KB id and score in `candidate_order`, and the margin between them
    (null where a mention has fewer candidates). `ids[row]`: the KB id of entity row `row` (None at -1)."""
    filled = np.where(np.isnan(scores), -np.inf, scores)
    order = candidate_order(scores, matrix, popularity)
    ranked_rows = np.take_along_axis(matrix, order, axis=1)
    ranked_scores = np.take_along_axis(filled, order, axis=1)
    width = matrix.shape[1]

    def column(index: int) -> tuple[list, np.ndarray]:
        if index >= width:
            return [None] * len(mention_ids), np.full(len(mention_ids), np.nan)
        entity = ranked_rows[:, index]
        value = np.where(entity >= 0, ranked_scores[:, index], np.nan)
        return ids[np.where(entity >= 0, entity, -1)].tolist(), value

    best_ids, best_scores = column(0)
    second_ids, second_scores = column(1)
    return (
        pl.DataFrame(
            {
                "mention_id": mention_ids,
                "best_kb_id": best_ids,
                "best_score": best_scores,
                "second_kb_id": second_ids,
                "second_score": second_scores,
            },
            schema={
                "mention_id": pl.String,
                "best_kb_id": pl.String,
                "best_score": pl.Float64,
                "second_kb_id": pl.String,
                "second_score": pl.Float64,
            },
        )
        .with_columns(pl.col("best_score").fill_nan(None), pl.col("second_score").fill_nan(None))
        .with_columns((pl.col("best_score") - pl.col("second_score")).alias("margin"))
    )


def _score_table(mention_ids: np.ndarray, matrix: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> pl.DataFrame:
    """Every scored candidate: mention_id, kb_id, rank (its triage rank: column + 1) and score."""
    row_index, slot = np.nonzero(matrix >= 0)
    return pl.DataFrame(
        {
            "mention_id": mention_ids[row_index],
            "kb_id": ids[matrix[row_index, slot]].tolist(),
            "rank": (slot + 1).astype(np.int32),
            "score": scores[row_index, slot].astype(np.float32),
        },
        # Typed, so a chunk with no candidate (or no mention) joins like any other.
        schema={"mention_id": pl.String, "kb_id": pl.String, "rank": pl.Int32, "score": pl.Float32},
    )
