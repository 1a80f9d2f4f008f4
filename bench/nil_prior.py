"""The mention NIL prior on finished runs: the NIL classifier with it and without, on dev and test.

    python bench/nil_prior.py --config configs/meantime.toml RUN_DIR [RUN_DIR ...]

For each finished run folder (triage, encode and train done; evaluate takes the seed its
model was trained with), re-runs evaluate (`--force`, `evaluate.nil_mention_prior = true`) and prints,
side by side, the classifier without and with the prior (`classifier` and
`classifier+prior` in report.md): micro-average / NIL F1 in the tuning split's 5-fold
cross-validation (what chooses) and on the evaluation split, which variant dev chose, and
the prior's ROC AUC on both splits; then both variants per language on the evaluation
split. The README's table ("The mention's NIL prior on
MEANTIME") is this script's output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core.config_file import load_config  # noqa: E402
from pipeline.evaluate import stage  # noqa: E402


def overall(rows: list[dict], method: str) -> str:
    """ "micro / NIL F1" of a method's all-languages row, or "—" when it has none."""
    for row in rows:
        if row["method"] == method and row["lang"] == "all":
            return f"{row['micro_average']:.3f} / {row['nil_f1']:.3f}"
    return "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    args = parser.parse_args()
    by_language = []
    print("| run | dev 5-fold, without | dev 5-fold, with | test, without | test, with | decision reads it | ROC AUC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run_dir in args.runs:
        overrides = [f"run.run_dir={run_dir.resolve()}", "evaluate.nil_mention_prior=true"]
        result = stage.run(load_config(args.config, tuple(overrides)), force=True)
        metrics = result.summary["metrics"]
        prior = metrics.get("mention_prior") or {}
        auc = ", ".join(
            f"{split} {value:.3f}" for split, value in prior.get("roc_auc", {}).items() if value is not None
        )
        validation, on_eval = metrics["nil_validation"], metrics["nil_methods"]
        print(
            f"| {run_dir} | {overall(validation, 'classifier')} | {overall(validation, 'classifier+prior')} | "
            f"{overall(on_eval, 'classifier')} | {overall(on_eval, 'classifier+prior')} | "
            f"{'yes' if metrics['nil_reads_prior'] else 'no'} | {auc or 'no prior'} |"
        )
        by_language += [(run_dir, row) for row in on_eval if row["method"] in ("classifier", "classifier+prior")]
    print("\nEvaluation split per language (micro-average / NIL F1):")
    for run_dir, row in by_language:
        print(f"  {run_dir} {row['method']:<16} {row['lang']:>4}: {row['micro_average']:.3f} / {row['nil_f1']:.3f}")


if __name__ == "__main__":
    main()
