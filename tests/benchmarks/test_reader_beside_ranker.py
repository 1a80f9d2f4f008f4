"""bench/reader_beside_ranker.py: the candidate table it builds from a run and the accuracies it prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "reader_beside_ranker.py"
spec = importlib.util.spec_from_file_location("reader_beside_ranker", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def write_run(run: Path) -> None:
    """Two test mentions (t1 gold A, t2 NIL), one dev (d1 gold B), one train (ignored); the reader read A and B of t1."""
    (run / "evaluate").mkdir(parents=True)
    (run / "rerank").mkdir()
    pl.DataFrame(
        {
            "mention_id": ["t1", "t2", "d1", "r1"],
            "split": ["test", "test", "dev", "train"],
            "gold_kb_id": ["A", "NIL", "B", "A"],
        }
    ).write_parquet(run / "evaluate" / "predictions.parquet")
    pl.DataFrame(
        {
            "mention_id": ["t1", "t1", "t2", "d1", "d1", "r1"],
            "kb_id": ["B", "A", "A", "B", "A", "A"],
            "rank": [1, 2, 1, 1, 2, 1],
            "score": [0.9, 0.5, 0.1, 0.8, 0.2, 0.9],
        }
    ).write_parquet(run / "evaluate" / "scores.parquet")
    pl.DataFrame(
        {"mention_id": ["t1", "t1"], "kb_id": ["A", "B"], "score": [0.7, 0.2], "nil_score": [0.1, 0.1]}
    ).write_parquet(run / "rerank" / "reader_scores.parquet")


def test_the_table_holds_dev_and_test_candidates_with_the_readers_probability(tmp_path: Path) -> None:
    write_run(tmp_path)
    table = bench.candidate_table(tmp_path).sort("mention_id", "kb_id")
    assert table["mention_id"].to_list() == ["d1", "d1", "t1", "t1", "t2"]
    assert table["reader_score"].to_list() == [0.0, 0.0, 0.7, 0.2, 0.0]  # unread candidates get 0
    assert table["read"].to_list() == [False, False, True, True, False]
    assert table["gap"].to_list() == pytest.approx([-0.6, 0.0, -0.4, 0.0, 0.0])
    test = table.filter(pl.col("split") == "test")
    # Only t1 has a gold KB id: the ranker's best (B) is wrong, the reader's (A) right.
    assert bench.first_candidate_accuracy(test, test["score"].to_numpy()) == 0.0
    assert bench.first_candidate_accuracy(test, test["reader_score"].to_numpy()) == 1.0


def test_nil_f1_counts_agreement_on_nil() -> None:
    truth = np.array([True, True, False, False])
    assert bench.nil_f1(truth, np.array([True, False, True, False])) == pytest.approx(0.5)
    assert bench.nil_f1(np.zeros(2, bool), np.zeros(2, bool)) == 0.0
