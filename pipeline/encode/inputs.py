"""What the encode stage reads from triage: the mentions and the entities to encode."""

from __future__ import annotations

import polars as pl

from pipeline.core import schema
from pipeline.core.config import RunConfig
from pipeline.core.io import collect_checked
from pipeline.formats import triage_tables


def entities_to_encode(
    entities: pl.LazyFrame, candidates: pl.LazyFrame, mentions: pl.LazyFrame, everything: bool
) -> pl.LazyFrame:
    """Entities that appear as a candidate or a gold link (all of them if asked), by kb_id."""

    if everything:
        return entities.sort("kb_id")
    needed = pl.concat(
        [
            candidates.select("kb_id"),
            mentions.select(pl.col("gold_kb_id").alias("kb_id")).filter(schema.linked_gold("kb_id")),
        ]
    ).unique()
    return entities.join(needed, on="kb_id", how="semi").sort("kb_id")


def read_triage(config: RunConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(mentions sorted by mention_id, entities to encode sorted by kb_id) from the triage stage."""
    triage_dir = config.stage_dir("triage")
    paths = [triage_tables.path(triage_dir, name) for name in triage_tables.FILES]
    mentions_lazy, entities_lazy, candidates_lazy = (
        triage_tables.scan(triage_dir, name) for name in triage_tables.FILES
    )
    mentions = collect_checked(
        mentions_lazy.select("mention_id", "context", "start", "end").sort("mention_id"), paths[0]
    )
    entities = entities_to_encode(entities_lazy, candidates_lazy, mentions_lazy, config.encoder.all_entities)
    return mentions, collect_checked(entities, *paths)
