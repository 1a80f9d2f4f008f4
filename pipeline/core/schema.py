"""Column contracts of the tables the stages exchange.

Each stage checks the tables it reads against these before collecting any data.
"""

from __future__ import annotations

import polars as pl

NIL_ID = "NIL"


def linked_gold(column: str = "gold_kb_id") -> pl.Expr:
    """True where `column` holds a KB id: neither null (no gold) nor NIL (gold says not in the KB)."""
    return pl.col(column).is_not_null() & (pl.col(column) != NIL_ID)


# mentions.parquet: one row per mention; `context` holds the text the mention sits in and
# `start`/`end` (end exclusive) are character offsets into it; `doc_start`/`doc_end`
# (end exclusive) are offsets into the full document, used for TAC output.
MENTIONS: dict[str, pl.DataType] = {
    "mention_id": pl.String(),
    "doc_id": pl.String(),
    "lang": pl.String(),
    "mention": pl.String(),
    "context": pl.String(),
    "start": pl.Int64(),
    "end": pl.Int64(),
    "doc_start": pl.Int64(),
    "doc_end": pl.Int64(),
    "split": pl.String(),
    "gold_kb_id": pl.String(),
    # The gold id as the input wrote it: TAC NIL cluster ids ("NIL0042") survive here.
    "gold_tac_id": pl.String(),
    "entity_type": pl.String(),
    "mention_type": pl.String(),
}

# entities.parquet: the KB, one row per entity.
ENTITIES: dict[str, pl.DataType] = {
    "kb_id": pl.String(),
    "name": pl.String(),
    "description": pl.String(),
    "type": pl.String(),
    "alias_texts": pl.List(pl.String()),
}

# candidates.parquet: top-k per mention, best first (rank 1).
CANDIDATES: dict[str, pl.DataType] = {
    "mention_id": pl.String(),
    "rank": pl.Int32(),
    "kb_id": pl.String(),
    "score": pl.Float64(),
    "sources": pl.List(pl.String()),
    "is_gold": pl.Boolean(),
}

# The values of candidates.parquet's `sources`, in the order the ranker's triage feature and the
# NIL classifier's evidence read them (one flag each, after the summed score).
TRIAGE_SOURCES = ("prior", "kb_name", "fuzzy", "dense", "external")
