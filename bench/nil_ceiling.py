"""How far can a NIL decision over a run's evidence go? Fit it on the evaluation split itself.

    python bench/nil_ceiling.py RUN_DIR

An upper bound, not a method: it cheats on purpose. For a finished run it fits the NIL
classifier evaluate uses (`pipeline.model.nil_classifier`: the ranker's best and runner-up
scores, margin, triage score, rank and sources, candidate count, mention length and
comma, type, and the mention NIL prior when the run's predictions carry it) on the
evaluation split's own gold, then scores that split with it: what the
classifier could reach if dev were exactly like test, at its rule (NIL when P(NIL) >
P(right), what maximises micro-average). It bounds that logistic regression over those
features, not every model (one flexible enough could memorise the split). A second line moves the
cut on P(NIL) to the one with the best NIL F1 in each language, again chosen on the
evaluation split. Beside both it prints what the run's evaluate achieved (its decision
fitted on dev), and counts the gold-NIL mentions whose very string is gold-linked to a KB
entity elsewhere in the run's mentions (`iPhone` NIL in one document, `enwiki:IPhone` in
another): mentions no evidence about the string can tell from a link.

Prints one table (per language, micro-average / NIL F1 for each row), then, for the
evaluation and tuning splits, how many mentions whose best candidate scores under -0.95
are right links, NILs and wrong links.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core import schema  # noqa: E402
from pipeline.model import mention_prior, nil_classifier  # noqa: E402

# The ranker-score bin whose make-up the script prints beside the table.
LOW_SCORE = -0.95


def nil_f1(says_nil: np.ndarray, gold_nil: np.ndarray) -> float:
    """strong_nil_match F1 of boolean NIL decisions against boolean NIL golds (0 when undefined)."""
    hits = float((says_nil & gold_nil).sum())
    precision, recall = hits / max(says_nil.sum(), 1), hits / max(gold_nil.sum(), 1)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def scores(says_nil: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(micro-average, NIL F1): a mention is right when NIL for a NIL gold, else when its best candidate is the gold."""
    correct = np.where(says_nil, labels == nil_classifier.NIL, labels == nil_classifier.RIGHT)
    return float(correct.mean()), nil_f1(says_nil, labels == nil_classifier.NIL)


def best_cut(p_nil: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(micro-average, NIL F1) at the cut on P(NIL) with the best NIL F1 (ties: the better micro-average)."""
    best = (0.0, 0.0)
    for cut in np.unique(p_nil):
        micro, f1 = scores(p_nil >= cut, labels)
        best = max(best, (micro, f1), key=lambda pair: (pair[1], pair[0]))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    run_dir = parser.parse_args().run_dir.resolve()
    split = json.loads((run_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))["split"]
    mentions = pl.read_parquet(run_dir / "triage" / "mentions.parquet")
    predictions = pl.read_parquet(run_dir / "evaluate" / "predictions.parquet").join(
        mentions.select("mention_id", "entity_type"), on="mention_id", how="left"
    )
    candidates = pl.read_parquet(run_dir / "triage" / "candidates.parquet")
    evaluated = nil_classifier.add_evidence(
        predictions.filter((pl.col("split") == split) & pl.col("gold_kb_id").is_not_null()), candidates
    )
    labels = nil_classifier.labels(evaluated)
    p_nil = nil_classifier.probabilities(nil_classifier.fit(evaluated), evaluated)
    in_sample = (p_nil[nil_classifier.NIL] > p_nil[nil_classifier.RIGHT]) | evaluated["best_kb_id"].is_null().to_numpy()
    achieved = evaluated["is_nil"].to_numpy()
    linked_strings = set(mentions.filter(schema.linked_gold())["mention"].to_list())
    conflicting = evaluated["mention"].is_in(list(linked_strings)).to_numpy() & (labels == nil_classifier.NIL)

    prior = " (with the mention NIL prior)" if mention_prior.COLUMN in predictions.columns else ""
    print(f"NIL decision over the evidence of {run_dir}{prior} on its {split} split; micro-average / NIL F1")
    languages = ["all", *sorted(evaluated["lang"].unique().to_list())]
    print("| row | " + " | ".join(languages) + " |")
    print("| --- |" + " --- |" * len(languages))
    rows = {
        "achieved (evaluate: fitted on dev)": [],
        f"classifier fitted on {split} itself": [],
        f"same, best-F1 cut chosen on {split} per language (all: one cut)": [],
        "NIL golds / of them linked elsewhere": [],
    }
    for lang in languages:
        keep = np.ones(evaluated.height, bool) if lang == "all" else (evaluated["lang"] == lang).to_numpy()
        row = iter(rows.values())
        for says in (achieved, in_sample):
            micro, f1 = scores(says[keep], labels[keep])
            next(row).append(f"{micro:.3f} / {f1:.3f}")
        micro, f1 = best_cut(p_nil[nil_classifier.NIL][keep], labels[keep])
        next(row).append(f"{micro:.3f} / {f1:.3f}")
        next(row).append(f"{int((labels[keep] == nil_classifier.NIL).sum())} / {int(conflicting[keep].sum())}")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    # Why the evidence does not separate NIL: at the lowest ranker scores right links outnumber NILs.
    tune = json.loads((run_dir / "evaluate" / "nil.json").read_text(encoding="utf-8")).get("tune_split", "dev")
    for name in (split, tune):
        low = predictions.filter(
            (pl.col("split") == name) & pl.col("gold_kb_id").is_not_null() & (pl.col("best_score") < LOW_SCORE)
        )
        counts = {
            label: int((nil_classifier.labels(low) == label).sum())
            for label in (nil_classifier.RIGHT, nil_classifier.NIL, nil_classifier.WRONG)
        }
        print(
            f"{name}: mentions whose best candidate scores under {LOW_SCORE}: "
            + ", ".join(f"{count} {label}" for label, count in counts.items())
        )


if __name__ == "__main__":
    main()
