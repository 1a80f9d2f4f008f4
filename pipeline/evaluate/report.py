"""report.md of evaluate: NIL decision, scores, error analysis."""

from __future__ import annotations

import polars as pl

from pipeline.evaluate import error_analysis
from pipeline.evaluate.evaluation import Evaluation
from pipeline.model import mention_prior
from pipeline.model.ties import TIED_SHARE_WARN
from pipeline.scoring.table import format_table


def _nil_rows(table: pl.DataFrame, source: str) -> list[str]:
    return [
        f"| {source} | {row['method']} | {row['lang']} | {row['mentions']} | {row['micro_average']:.3f} | "
        f"{row['nil_precision']:.3f} | {row['nil_recall']:.3f} | {row['nil_f1']:.3f} |"
        for row in table.sort("method", pl.col("lang") == error_analysis.ALL, "lang").iter_rows(named=True)
    ]


def report_markdown(evaluation: Evaluation) -> str:
    """The whole report.md of an evaluation whose steps have all run: the NIL decision, every NIL method
    on the tuning split's cross-validation (`nil_choice.cross_validate`) and on the evaluation split
    (`error_analysis.outcome_scores`), ties, errors by kind (ranker and reader side by side), the TAC
    scores and the error analysis."""
    metrics, artifact, split = evaluation.metrics, evaluation.artifact, evaluation.config.evaluate.eval_split
    tune = artifact.get("tune_split", "dev")
    lines = [f"# Evaluation on the {split} split", "", *_nil_decision(metrics, artifact)]
    lines += _mention_prior(metrics, tune)
    if evaluation.sweep_table is not None:
        lines += ["", "![micro-average against threshold](thresholds.png)"]
    lines += _nil_methods(evaluation.validation, evaluation.on_eval, split, tune)
    lines += _ties(metrics.get("tied_best"), artifact["method"] == "reader")
    if evaluation.error_kinds is not None:
        lines += ["", error_analysis.error_kinds_markdown(evaluation.error_kinds)]
    lines += [
        "",
        "## Scores",
        "",
        "```",
        format_table(metrics),
        "```",
        "",
        error_analysis.markdown(evaluation.analysis, evaluation.confusions),
    ]
    return "\n".join(lines)


def _nil_decision(metrics: dict, artifact: dict) -> list[str]:
    """What decided NIL (`metrics["nil_decided_by"]`), then the thresholds per language with the tuning split's
    mentions and NILs they rest on: the decision's own, or, where no threshold decides, the `threshold`
    method's, said to be so."""
    counts, tune = artifact.get("tuning_counts", {}), artifact.get("tune_split", "dev")
    decided, method = metrics.get("nil_decided_by", artifact["method"]), artifact["method"]
    said = f"NIL is decided by **{decided}** (evaluate.nil_method = {method}; see docs/nil.md)."
    if metrics.get("thresholds") is None:
        said += (
            " No threshold decides; those below are the `threshold` method's, which the table of methods sets"
            f" beside the {method}."
        )
    lines = ["## NIL decision", "", said, "", f"| language | threshold | {tune} mentions | {tune} NILs |"]
    lines.append("| --- | --- | --- | --- |")
    for lang, value in sorted(artifact["thresholds"].items()):
        count = counts.get(lang, {"mentions": 0, "nil": 0})
        lines.append(f"| {lang} | {value:.3f} | {count['mentions']} | {count['nil']} |")
    return lines


def _mention_prior(metrics: dict, tune: str) -> list[str]:
    """The mention NIL prior, where evaluate.nil_mention_prior asked for it: fitted on what, how well it tells
    NIL from linked, whether the NIL decision reads it; or why it was not fitted."""
    prior = metrics.get("mention_prior")
    if "mention_prior" in metrics and prior is None:
        return [
            "",
            f"Mention NIL prior (evaluate.nil_mention_prior): not fitted, the training split has fewer than "
            f"{mention_prior.MIN_EXAMPLES} NIL or linked mentions with gold.",
        ]
    if not prior:
        return []
    reads = metrics.get("nil_reads_prior", False)
    auc = ", ".join(f"{name} {value:.3f}" for name, value in prior["roc_auc"].items() if value is not None) or "none"
    return [
        "",
        f"Mention NIL prior (evaluate.nil_mention_prior): fitted on {prior['mentions']} training mentions, "
        f"{prior['nil']} of them NIL; ROC AUC of NIL against linked: {auc}. The NIL decision "
        + (
            f"reads it: the classifier did better with it (`classifier+prior`) in the {tune} cross-validation below."
            if reads
            else "does not read it."
        ),
    ]


def _nil_methods(validation: pl.DataFrame | None, on_eval: pl.DataFrame, split: str, tune: str) -> list[str]:
    """Every NIL method's micro-average and NIL precision / recall / F1: in the tuning split's
    cross-validation (`validation`, None when none was made) and on the evaluation split (`on_eval`)."""
    lines = [
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
    return lines + _nil_rows(on_eval, split)


def _ties(ties: dict | None, reader_decides: bool = False) -> list[str]:
    """How many mentions' best two candidates tie (`ties.tied_best`), and whether that is too many (W502);
    when the reader decides, that they link nothing (it links its own most probable candidate)."""
    if not (ties and ties["mentions"]):
        return []
    if reader_decides:
        verdict = " The reader decides which candidate is linked, so these ties link nothing."
    elif ties["share"] > TIED_SHARE_WARN:
        verdict = (
            f" **For {ties['share']:.0%} of them, which candidate is linked is triage's choice, not the "
            "ranker's** (warning W502)."
        )
    else:
        verdict = ""
    return [
        "",
        f"Ties: the best two candidates have the same ranker score for {ties['tied']} of "
        f"{ties['mentions']} mentions with a runner-up ({ties['share']:.1%}); a tie keeps triage's order." + verdict,
    ]
