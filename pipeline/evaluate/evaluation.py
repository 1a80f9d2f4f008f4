"""What evaluate computes, step by step: the record its steps fill in and report.md reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.config import RunConfig


@dataclass
class Evaluation:
    """What evaluate computes, step by step (`stage._score`, `_decide`, `_measure`, `_analyse`), for
    `stage._write` to save and `report.report_markdown` to show. Each step fills in its fields."""

    config: RunConfig
    out_dir: Path
    triage_dir: Path
    # `_score`: candidates, mentions with their ranker rows, the model file's contents and seed, the scores.
    candidates: pl.DataFrame = None
    mentions: pl.DataFrame = None
    rows: np.ndarray = None
    saved: dict = None
    seed: int = 0  # the seed the model was trained with
    score_table: pl.DataFrame = None
    predictions: pl.DataFrame = None
    prior: dict | None = None
    # `_decide`: the NIL artifact and the tables it was chosen by, the decisions and the TAC measures.
    artifact: dict = None
    sweep_table: pl.DataFrame | None = None
    validation: pl.DataFrame | None = None
    variants: dict | None = None
    decided: pl.DataFrame = None
    evaluated: pl.DataFrame = None
    metrics: dict = None
    tabs: tuple = None  # (gold.tab frame, system.tab frame, doc languages)
    # `_measure`: every NIL method on the evaluation split, and its errors by kind.
    on_eval: pl.DataFrame = None
    error_kinds: pl.DataFrame = None
    # `_analyse`: the error analysis (`error_analysis.analyse`).
    analysis: pl.DataFrame = None
    confusions: pl.DataFrame = None
