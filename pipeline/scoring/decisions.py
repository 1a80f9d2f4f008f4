"""Decided mentions as TAC KBP 2015 EDL rows, and their scores: what evaluate and
`xel-cli link --score` both write and score, so their metrics mean the same.

This module owns the names of those shared outputs (`system.tab`, `gold.tab`,
`metrics.json`) and the one reader of `metrics.json`, which the studies read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.core.errors import CacheError
from pipeline.scoring.measures import score

RUN_ID = "xel"
SYSTEM_TAB = "system.tab"
GOLD_TAB = "gold.tab"
METRICS_JSON = "metrics.json"


def read_metrics(folder: Path) -> dict:
    """The `metrics.json` of an evaluate or link folder (E402 when missing or damaged)."""
    path = folder / METRICS_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheError("E402", path=path, detail=f"metrics cannot be read ({exc})") from None


def score_decisions(evaluated: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    """(gold.tab frame, system.tab frame, doc_id -> lang, metrics) of decided mentions with gold.

    `evaluated` needs the `tac_frame` columns, gold_tac_id, system_id and lang. Evaluate and
    `xel-cli link --score` both score with this, so their metrics mean the same.
    """
    gold_tab, system_tab = tac_frame(evaluated, "gold_tac_id"), tac_frame(evaluated, "system_id")
    languages = evaluated.select("doc_id", "lang").unique()
    return gold_tab, system_tab, languages, score(gold_tab, system_tab, languages)


def tac_frame(table: pl.DataFrame, id_column: str) -> pl.DataFrame:
    """TAC KBP 2015 rows (end inclusive) from mentions with doc offsets and an id column."""
    return table.select(
        pl.lit(RUN_ID).alias("run_id"),
        "mention_id",
        pl.col("mention").str.replace_all(r"\s+", " ").alias("mention"),
        "doc_id",
        pl.col("doc_start").alias("start"),
        (pl.col("doc_end") - 1).alias("end"),
        pl.col(id_column).alias("kb_id"),
        pl.col("entity_type").fill_null("UNK").alias("entity_type"),
        pl.col("mention_type").fill_null("NAM").alias("mention_type"),
        pl.lit(1.0).alias("confidence"),
    )
