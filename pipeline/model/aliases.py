"""What triage learns from training mentions: the alias table, shared by triage and the model folder.

Triage derives its priors P(e|m) and the fuzzy source's training names from it; a
trained linker (`pipeline/model/model_folder.py`) keeps it as `aliases.parquet`, so
`xel-cli link` proposes the candidates the run's triage would.
"""

from __future__ import annotations

import polars as pl

from pipeline.core import schema


def alias_table(training: pl.DataFrame) -> pl.DataFrame:
    """What triage learns from training: (mention, gold_kb_id, count) over linked training mentions.

    `count` is how many training mentions have that exact string and gold entity; the
    priors P(e|m) and the training surface forms of the fuzzy source both come from it.
    A trained linker keeps this table (`pipeline/model/model_folder.py`).
    """
    linked = training.filter(schema.linked_gold())
    return (
        linked.group_by("mention", "gold_kb_id")
        .agg(pl.len().cast(pl.Int64).alias("count"))
        .sort("mention", "gold_kb_id")
    )
