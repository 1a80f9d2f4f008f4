"""The reader beside the ranker, not instead of it: do its probabilities add to the ranker's evidence?

    python bench/reader_beside_ranker.py --run-dir artifacts/meantime   # a finished run with rerank.enabled

Reads a finished run's evaluate/predictions.parquet, evaluate/scores.parquet (every candidate's
ranker score) and rerank/reader_scores.parquet (the reader's probability of each candidate it
read and of its NIL option), fits on the dev split and scores the test split, side by side:

1. Which candidate: first-candidate accuracy on test mentions with a gold KB id, of the ranker
   (its best score), the reader (its most probable candidate) and a logistic regression over
   both per candidate (ranker score, gap to the mention's best, ranker rank 1, log reader
   probability, whether the reader read it), fitted on dev's candidates (gold vs not).
2. Which mentions are NIL: test NIL F1 of a logistic regression over the ranker's evidence
   (best score, margin) against the same plus the reader's (NIL probability, best probability,
   whether its best is the ranker's), each with the probability cut that maximises dev NIL F1.

Both models are fitted on dev only (the ranker and the reader trained on train), so no test
label is seen. scikit-learn's LogisticRegression (C = 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

NIL = "NIL"
CUTS = np.linspace(0.05, 0.95, 19)


def candidate_table(run: Path) -> pl.DataFrame:
    """One row per (dev or test mention, ranker candidate): ranker score and rank, reader probability."""
    predictions = pl.read_parquet(run / "evaluate" / "predictions.parquet").select("mention_id", "split", "gold_kb_id")
    reader = pl.read_parquet(run / "rerank" / "reader_scores.parquet").select(
        "mention_id", "kb_id", pl.col("score").alias("reader_score")
    )
    table = (
        pl.read_parquet(run / "evaluate" / "scores.parquet")
        .join(reader, on=["mention_id", "kb_id"], how="left")
        .join(predictions, on="mention_id")
        .filter(pl.col("split").is_in(["dev", "test"]))
    )
    return table.with_columns(
        pl.col("reader_score").is_not_null().alias("read"),
        pl.col("reader_score").fill_null(0.0),
        (pl.col("score") - pl.col("score").max().over("mention_id")).alias("gap"),
        (pl.col("kb_id") == pl.col("gold_kb_id")).alias("gold"),
    )


def candidate_features(table: pl.DataFrame) -> np.ndarray:
    return np.column_stack(
        [
            table["score"],
            table["gap"],
            table["rank"] == 1,
            np.log(table["reader_score"].to_numpy() + 1e-4),
            table["read"],
        ]
    ).astype(float)


def first_candidate_accuracy(table: pl.DataFrame, score: np.ndarray) -> float:
    """Share of linked mentions whose highest-`score` candidate is their gold."""
    best = (
        table.with_columns(pl.Series("by", score))
        .sort(["mention_id", "by"], descending=[False, True])
        .group_by("mention_id", maintain_order=True)
        .first()
        .filter(pl.col("gold_kb_id") != NIL)
    )
    return float(best["gold"].mean())


def nil_f1(truth: np.ndarray, said: np.ndarray) -> float:
    return float(2 * (truth & said).sum() / max(truth.sum() + said.sum(), 1))


def nil_table(run: Path) -> pl.DataFrame:
    return (
        pl.read_parquet(run / "evaluate" / "predictions.parquet")
        .filter(pl.col("split").is_in(["dev", "test"]))
        .with_columns((pl.col("reader_kb_id") == pl.col("best_kb_id")).fill_null(False).alias("reader_agrees"))
    )


def nil_f1_with(table: pl.DataFrame, features: list[str]) -> tuple[float, float]:
    """(test NIL F1, the dev-chosen probability cut) of a logistic regression over `features`, fitted on dev."""
    dev, test = table.filter(pl.col("split") == "dev"), table.filter(pl.col("split") == "test")
    rows = lambda part: part.select(features).fill_null(0.0).to_numpy().astype(float)  # noqa: E731
    truth = lambda part: (part["gold_kb_id"] == NIL).to_numpy()  # noqa: E731
    model = LogisticRegression(C=1.0, max_iter=1000).fit(rows(dev), truth(dev))
    on_dev = model.predict_proba(rows(dev))[:, 1]
    cut = max(CUTS, key=lambda c: nil_f1(truth(dev), on_dev > c))
    return nil_f1(truth(test), model.predict_proba(rows(test))[:, 1] > cut), float(cut)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished run with rerank.enabled = true")
    run = parser.parse_args().run_dir
    table = candidate_table(run)
    dev, test = table.filter(pl.col("split") == "dev"), table.filter(pl.col("split") == "test")
    stacked = LogisticRegression(C=1.0, max_iter=1000).fit(candidate_features(dev), dev["gold"])
    linked = test.filter(pl.col("gold_kb_id") != NIL)["mention_id"].n_unique()
    print(f"{run}: first-candidate accuracy on {linked} linked test mentions (fitted on dev)")
    for name, score in (
        ("ranker", test["score"].to_numpy()),
        ("reader", test["reader_score"].to_numpy()),
        ("ranker + reader", stacked.decision_function(candidate_features(test))),
    ):
        print(f"  {name:<34}{first_candidate_accuracy(test, score):.3f}")
    mentions = nil_table(run)
    print(f"test NIL F1 ({(mentions['gold_kb_id'] == NIL).sum()} NIL of {mentions.height} dev+test mentions)")
    ranker = ["best_score", "margin"]
    for name, features in (
        ("ranker's evidence", ranker),
        ("ranker's + reader's evidence", [*ranker, "reader_nil_score", "reader_score", "reader_agrees"]),
        ("reader's NIL probability alone", ["reader_nil_score"]),
    ):
        f1, cut = nil_f1_with(mentions, features)
        print(f"  {name:<34}{f1:.3f}  (dev's cut {cut:.2f})")


if __name__ == "__main__":
    main()
