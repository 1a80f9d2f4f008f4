"""report.md of evaluate: NIL decision, scores, error analysis."""

from __future__ import annotations

import polars as pl

from pipeline.evaluate import error_analysis
from pipeline.model import mention_prior
from pipeline.model.ties import TIED_SHARE_WARN
from pipeline.scoring.table import format_table


def _nil_rows(table: pl.DataFrame, source: str) -> list[str]:
    return [
        f"| {source} | {row['method']} | {row['lang']} | {row['mentions']} | {row['micro_average']:.3f} | "
        f"{row['nil_precision']:.3f} | {row['nil_recall']:.3f} | {row['nil_f1']:.3f} |"
        for row in table.sort("method", pl.col("lang") == error_analysis.ALL, "lang").iter_rows(named=True)
    ]


def _decision_lines(metrics: dict, artifact: dict) -> list[str]:
    """What decided NIL (`metrics["nil_decided_by"]`), then the thresholds per language with the tuning split's
    mentions and NILs they rest on: the decision's own, or, where no threshold decides, the `threshold`
    method's, said to be so."""
    counts, tune = artifact.get("tuning_counts", {}), artifact.get("tune_split", "dev")
    decided, method = metrics.get("nil_decided_by", artifact["method"]), artifact["method"]
    said = f"NIL is decided by **{decided}** (evaluate.nil_method = {method}; see docs/nil.md)."
    if metrics.get("thresholds") is None:
        said += f" No threshold decides; those below are the `threshold` method's, which the table of methods sets beside the {method}."
    lines = [said, "", f"| language | threshold | {tune} mentions | {tune} NILs |", "| --- | --- | --- | --- |"]
    for lang, value in sorted(artifact["thresholds"].items()):
        count = counts.get(lang, {"mentions": 0, "nil": 0})
        lines.append(f"| {lang} | {value:.3f} | {count['mentions']} | {count['nil']} |")
    return lines


def report_markdown(
    metrics: dict,
    artifact: dict,
    split: str,
    has_plot: bool,
    validation: pl.DataFrame | None,
    on_eval: pl.DataFrame,
    analysis: pl.DataFrame,
    confusions: pl.DataFrame,
    error_kinds: pl.DataFrame | None = None,
) -> str:
    """The whole report.md.

    artifact: the NIL artifact (`nil.json`); validation: `nil_choice.cross_validate`'s
    table or None; on_eval: `error_analysis.outcome_scores` of each NIL method on the
    evaluation split, with a `method` column; error_kinds: `error_analysis.error_kinds` of the same
    methods (ranker and reader side by side), or None.
    """
    tune = artifact.get("tune_split", "dev")
    lines = [f"# Evaluation on the {split} split", "", "## NIL decision", "", *_decision_lines(metrics, artifact)]
    prior = metrics.get("mention_prior")
    if "mention_prior" in metrics and prior is None:
        lines += [
            "",
            f"Mention NIL prior (evaluate.nil_mention_prior): not fitted, the training split has fewer than "
            f"{mention_prior.MIN_EXAMPLES} NIL or linked mentions with gold.",
        ]
    if prior:
        reads = metrics.get("nil_reads_prior", False)
        auc = (
            ", ".join(f"{name} {value:.3f}" for name, value in prior["roc_auc"].items() if value is not None) or "none"
        )
        lines += [
            "",
            f"Mention NIL prior (evaluate.nil_mention_prior): fitted on {prior['mentions']} training mentions, "
            f"{prior['nil']} of them NIL; ROC AUC of NIL against linked: {auc}. The NIL decision "
            + (
                "reads it: the classifier did better with it (`classifier+prior`) in the "
                f"{tune} cross-validation below."
                if reads
                else "does not read it."
            ),
        ]
    if has_plot:
        lines += ["", "![micro-average against threshold](thresholds.png)"]
    lines += [
        "",
        "Each method (with `nota`, the ranker's own NIL option, when it has one, and `reader`, the reader's "
        "best candidate or its learned NIL option, when the run has one): micro-average and "
        f"NIL precision / recall / F1. `{tune} (5-fold)`: each fold decided by thresholds and a classifier "
        f"fitted on the other four folds, and by nota, which fits nothing (what `auto` chooses by); "
        f"`{split}`: the methods fitted on all of {tune}.",
        "",
        "| data | method | language | mentions | micro-average | NIL P | NIL R | NIL F1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if validation is not None:
        lines += _nil_rows(validation, f"{tune} (5-fold)")
    lines += _nil_rows(on_eval, split)
    ties = metrics.get("tied_best")
    if ties and ties["mentions"]:
        lines += [
            "",
            f"Ties: the best two candidates have the same ranker score for {ties['tied']} of "
            f"{ties['mentions']} mentions with a runner-up ({ties['share']:.1%}); a tie keeps triage's order."
            + (
                f" **For {ties['share']:.0%} of them, which candidate is linked is triage's choice, not the "
                "ranker's** (warning W502)."
                if ties["share"] > TIED_SHARE_WARN
                else ""
            ),
        ]
    if error_kinds is not None:
        lines += ["", error_analysis.error_kinds_markdown(error_kinds)]
    lines += [
        "",
        "## Scores",
        "",
        "```",
        format_table(metrics),
        "```",
        "",
        error_analysis.markdown(analysis, confusions),
    ]
    return "\n".join(lines)
