"""The reader's candidate order: one function for the rerank stage and link (`LoadedReader.order`)."""

from __future__ import annotations

import polars as pl
import torch

from pipeline.model.reader import LoadedReader
from pipeline.model.reader_inputs import candidate_order, top_candidates

CANDIDATES = pl.DataFrame(
    {
        "mention_id": ["m1", "m1", "m1", "m2", "m2"],
        "kb_id": ["Q1", "Q2", "Q3", "Q1", "Q4"],
        "rank": [1, 2, 3, 1, 2],
        "score": [9.0, 8.0, 7.0, 9.0, 1.0],  # triage's own score: never the reader's order
    }
)
# The ranker prefers Q3 for m1 and did not score m2's Q1 (e.g. its entity was not encoded).
RANKER = pl.DataFrame(
    {"mention_id": ["m1", "m1", "m1", "m2"], "kb_id": ["Q1", "Q2", "Q3", "Q4"], "score": [0.1, -0.5, 0.7, 0.2]}
)


def slots(ordered: pl.DataFrame, top_k: int) -> dict[str, list[str]]:
    top = top_candidates(ordered, top_k).sort("mention_id", "slot")
    return {m: group["kb_id"].to_list() for (m,), group in top.group_by("mention_id", maintain_order=True)}


def test_triage_order_is_the_rank_and_ranker_order_the_score_with_unscored_last() -> None:
    assert slots(candidate_order(CANDIDATES, None), 2) == {"m1": ["Q1", "Q2"], "m2": ["Q1", "Q4"]}
    assert slots(candidate_order(CANDIDATES, RANKER), 2) == {"m1": ["Q3", "Q1"], "m2": ["Q4", "Q1"]}
    # triage's score comes along as triage_score, for a reader that reads triage evidence
    assert candidate_order(CANDIDATES, RANKER).columns == ["mention_id", "kb_id", "rank", "triage_score", "order"]


def test_link_orders_as_the_reader_was_trained() -> None:
    def loaded(candidates: str) -> LoadedReader:
        return LoadedReader(reader=None, tokenizer=None, meta={"candidates": candidates}, device=torch.device("cpu"))

    assert loaded("triage").order(CANDIDATES, RANKER).equals(candidate_order(CANDIDATES, None))
    assert loaded("ranker").order(CANDIDATES, RANKER).equals(candidate_order(CANDIDATES, RANKER))
