"""What `xel-cli` prints when a stage finishes: the lines of a `StageResult`, counts and tables
(link's are `pipeline.link.summary`).

Lines, not output: only `cli.py` prints (and `--quiet` silences them there).
"""

from __future__ import annotations

from pipeline.core.manifest import StageResult
from pipeline.scoring.table import format_frame, format_table


def nil_decision(metrics: dict) -> str:
    """What decided NIL, from evaluate's metrics.json: the thresholds per language where they decided
    ("NIL thresholds en=-0.50, ...; NIL decided by the thresholds"), else what did, without thresholds it
    never read ("NIL decided by the reader (...)")."""
    if metrics.get("thresholds") is None:
        return f"NIL decided by {metrics['nil_decided_by']}"
    thresholds = ", ".join(f"{k}={v:.2f}" for k, v in sorted(metrics["thresholds"].items()))
    return f"NIL thresholds {thresholds}; NIL decided by the thresholds"


def stage_summary(result: StageResult) -> list[str]:
    """Up to date, or done with its counts; then triage's recall table, train's best epoch, or
    evaluate's thresholds, score table and NIL methods."""
    if result.skipped:
        return [f"{result.stage}: up to date ({result.out_dir}); --force redoes it"]
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
    lines = [f"{result.stage}: done in {result.seconds:.1f}s ({counts}) -> {result.out_dir}"]
    if result.stage == "triage":
        lines.append(format_frame(result.summary["recall"]))
    if result.stage == "train":
        accuracy = result.summary["best_dev_accuracy"]
        if "dev_accuracy_by_ties" in result.summary:
            by_ties = result.summary["dev_accuracy_by_ties"]
            measured = "" if by_ties is None else f" ({by_ties:.4f} with triage's order breaking the ties)"
            lines.append(
                f"train: best dev linking accuracy n/a: ties decided it{measured}, see [W503]; "
                f"best epoch {result.summary['best_epoch']}"
            )
        elif accuracy is None:
            lines.append(f"train: no dev mentions; best epoch by training loss: {result.summary['best_epoch']}")
        else:
            lines.append(f"train: best dev linking accuracy {accuracy:.4f} at epoch {result.summary['best_epoch']}")
    if result.stage == "rerank":
        accuracy = result.summary["best_dev_accuracy"]
        lines.append(
            f"rerank: no dev mentions; best epoch by training loss: {result.summary['best_epoch']}"
            if accuracy is None
            else f"rerank: best dev micro-average of the reader {accuracy:.4f} at epoch {result.summary['best_epoch']}"
        )
    if result.stage == "evaluate":
        metrics = result.summary["metrics"]
        unscored = metrics.get("unscored_mentions", 0)
        left_out = f"; {unscored} {metrics['split']} mention(s) without gold_kb_id left out" if unscored else ""
        lines += [
            f"evaluate: {metrics['split']} split, {nil_decision(metrics)}{left_out}",
            format_table(metrics),
            "NIL decision on this split (method, language: micro-average, NIL precision/recall/F1):",
        ]
        rows = metrics.get("nil_methods", [])
        width = max((len(row["method"]) for row in rows), default=10)
        lines += [
            f"  {row['method']:<{width}} {row['lang']:>4}: {row['micro_average']:.3f}  "
            f"P {row['nil_precision']:.3f} R {row['nil_recall']:.3f} F1 {row['nil_f1']:.3f}"
            for row in rows
        ]
    return lines
