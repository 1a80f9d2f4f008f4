"""The reader against the ranker on the ambiguity set: one surface name, several entities, the context decides.

    python bench/ambiguity.py [--seed 13] [--form listwise|pairwise] [--run-dir DIR]
                              [--config bench/data/ambiguity/ambiguity.toml] [--set SECTION.KEY=VALUE ...]

Runs `xel-cli run` (triage, encode, train, rerank, evaluate; finished stages of the run folder
are up to date and skipped) on `bench/data/ambiguity` (its README says what the set is) with
the offline `xel/multilingual-e5-small` encoder, `--seed` as both `train.seed` and
`rerank.seed` and `--form` as `rerank.form`, into `--run-dir` (default
`artifacts/ambiguity-<form>-seed<seed>`). The stages' progress goes to stderr. Then prints, on
the evaluation split (test), per language and over all, side by side:

- over the mentions whose gold is a KB entity (`linked`), how often the first candidate is the
  gold: triage's (its summed source scores: the alias prior from training mentions, KB name,
  fuzzy and dense name matches; ties in its order), the ranker's best and the reader's most
  probable candidate;
- over every mention with gold, NIL ones included (`mentions`), the KBP2010 micro-average and
  NIL F1 of the ranker with the NIL method that dev's cross-validation picks among the ranker's
  own (threshold, classifier, nota), and of the reader with its learned NIL option (evaluate's
  `reader` method), both as evaluate scored them (metrics.json `nil_methods`).

Nothing is chosen on test: the ranker's NIL method is the one with the best held-out dev
micro-average, as evaluate's `auto` chooses among the ranker's methods.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "data" / "ambiguity" / "ambiguity.toml"
# The ranker's NIL methods in evaluate's tie order (on a tie `auto` takes the later one, and its
# classifier reads the mention NIL prior only when that variant is strictly better).
RANKER_METHODS = ("threshold", "classifier+prior", "classifier", "nota")
READER_METHOD = "reader"
ALL = "all"


def run_pipeline(config: Path, run_dir: Path, assignments: list[str]) -> float:
    """`xel-cli run` of `config` into `run_dir` with `--set` `assignments`; its wall seconds. Exits on failure."""
    command = [sys.executable, str(ROOT / "cli.py"), "run", "--config", str(config), "--run-dir", str(run_dir)]
    for assignment in assignments:
        command += ["--set", assignment]
    started = time.time()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=sys.stderr)
    if result.returncode != 0:
        sys.exit(f"xel-cli run failed with exit code {result.returncode}: {' '.join(command)}")
    return time.time() - started


def ranker_method(metrics: dict) -> str:
    """The ranker's NIL method with the best held-out dev micro-average over all languages (later on a tie)."""
    overall = {
        row["method"]: row["micro_average"]
        for row in metrics.get("nil_validation", [])
        if row["lang"] == ALL and row["method"] in RANKER_METHODS
    }
    if not overall:  # no cross-validation (too few dev NILs for a classifier, no NIL option): thresholds
        return "threshold"
    return max(overall, key=lambda method: (overall[method], RANKER_METHODS.index(method)))


def first_candidate_accuracy(run_dir: Path, split: str) -> pl.DataFrame:
    """(lang, linked, triage, ranker, reader): per language and over all, the linked mentions of `split`
    with gold and the share of them whose first candidate (triage's rank 1, the ranker's best, the
    reader's most probable) is the gold; a mention without candidates counts as wrong."""
    predictions = pl.read_parquet(run_dir / "evaluate" / "predictions.parquet").filter(
        (pl.col("split") == split) & pl.col("gold_kb_id").is_not_null() & (pl.col("gold_kb_id") != "NIL")
    )
    triage_first = (
        pl.read_parquet(run_dir / "triage" / "candidates.parquet")
        .filter(pl.col("rank") == 1)
        .select("mention_id", pl.col("kb_id").alias("triage_kb_id"))
    )
    frame = predictions.join(triage_first, on="mention_id", how="left")
    frame = pl.concat([frame, frame.with_columns(pl.lit(ALL).alias("lang"))])
    right = {
        name: (pl.col(column) == pl.col("gold_kb_id")).fill_null(False).mean().alias(name)
        for name, column in (("triage", "triage_kb_id"), ("ranker", "best_kb_id"), ("reader", "reader_kb_id"))
    }
    return frame.group_by("lang").agg(pl.len().alias("linked"), *right.values())


def method_scores(metrics: dict, method: str) -> dict[str, dict]:
    """{lang: evaluate's row for `method`} (mentions, micro_average, nil_f1, ...) of metrics.json's nil_methods."""
    return {row["lang"]: row for row in metrics["nil_methods"] if row["method"] == method}


def print_table(accuracy: pl.DataFrame, ranker: dict[str, dict], reader: dict[str, dict], method: str) -> None:
    """One markdown row per language, then `all`: first-candidate accuracies, then micro-average and NIL F1."""
    print(
        f"| language | linked | triage first | ranker first | reader first | mentions "
        f"| ranker ({method}) micro-avg | reader micro-avg | ranker NIL F1 | reader NIL F1 |"
    )
    print("| --- " * 10 + "|")
    languages = sorted(lang for lang in accuracy["lang"].to_list() if lang != ALL) + [ALL]
    for lang in languages:
        row = accuracy.filter(pl.col("lang") == lang).row(0, named=True)
        ours, theirs = ranker[lang], reader[lang]
        print(
            f"| {lang} | {row['linked']} | {row['triage']:.3f} | {row['ranker']:.3f} | {row['reader']:.3f} "
            f"| {ours['mentions']} | {ours['micro_average']:.3f} | {theirs['micro_average']:.3f} "
            f"| {ours['nil_f1']:.3f} | {theirs['nil_f1']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the set's config (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=13, help="train.seed and rerank.seed (default: %(default)s)")
    parser.add_argument("--form", choices=("listwise", "pairwise"), default="listwise", help="rerank.form")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: artifacts/ambiguity-<form>-seed<seed>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more SECTION.KEY=VALUE")
    args = parser.parse_args()
    run_dir = (args.run_dir or ROOT / "artifacts" / f"ambiguity-{args.form}-seed{args.seed}").resolve()
    assignments = [f"train.seed={args.seed}", f"rerank.seed={args.seed}", f"rerank.form={args.form}", *args.overrides]
    seconds = run_pipeline(args.config.resolve(), run_dir, assignments)
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    rerank = json.loads((run_dir / "rerank" / "manifest.json").read_text(encoding="utf-8"))
    method = ranker_method(metrics)
    print(
        f"ambiguity set, {metrics['split']} split; run {run_dir} ({seconds:.0f} s, of it the reader "
        f"{rerank.get('seconds', float('nan')):.0f} s by its manifest); seed {args.seed}, reader form "
        f"{args.form}; {platform.node()}, {os.cpu_count()} CPUs; evaluate chose NIL method "
        f"'{metrics['nil_method']}'"
    )
    print_table(
        first_candidate_accuracy(run_dir, metrics["split"]),
        method_scores(metrics, method),
        method_scores(metrics, READER_METHOD),
        method,
    )


if __name__ == "__main__":
    main()
