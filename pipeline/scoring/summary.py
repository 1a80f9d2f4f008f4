"""What `xel-cli` prints when a stage or `link` finishes: the lines of a `StageResult` or
`LinkResult`, counts and tables.

Lines, not output: only `cli.py` prints (and `--quiet` silences them there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.core.manifest import StageResult
from pipeline.scoring.table import format_frame, format_table

if TYPE_CHECKING:  # link sits above scoring: read only for the annotation
    from pipeline.link.run import LinkResult


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
        if accuracy is None:
            lines.append(f"train: no dev mentions; best epoch by training loss: {result.summary['best_epoch']}")
        else:
            lines.append(f"train: best dev linking accuracy {accuracy:.4f} at epoch {result.summary['best_epoch']}")
    if result.stage == "evaluate":
        metrics = result.summary["metrics"]
        thresholds = ", ".join(f"{k}={v:.2f}" for k, v in sorted(metrics["thresholds"].items()))
        prior = " reading the mention NIL prior" if metrics.get("nil_reads_prior") else ""
        unscored = metrics.get("unscored_mentions", 0)
        left_out = f"; {unscored} {metrics['split']} mention(s) without gold_kb_id left out" if unscored else ""
        lines += [f"evaluate: {metrics['split']} split, NIL thresholds {thresholds}; NIL decided by the "
                  f"{metrics['nil_method']}{prior}{left_out}",
                  format_table(metrics), "NIL decision on this split (method, language: micro-average, NIL precision/recall/F1):"]
        rows = metrics.get("nil_methods", [])
        width = max((len(row["method"]) for row in rows), default=10)
        lines += [f"  {row['method']:<{width}} {row['lang']:>4}: {row['micro_average']:.3f}  "
                  f"P {row['nil_precision']:.3f} R {row['nil_recall']:.3f} F1 {row['nil_f1']:.3f}"
                  for row in rows]
    return lines


def link_summary(result: LinkResult, shard: tuple[int, int] | None) -> list[str]:
    """What `xel-cli link` prints: counts and speed, then the NIL share per language and the
    scores (with --score: `result.metrics`), or, for a shard (i, n), what to run next."""
    if result.skipped:
        return [f"link: up to date ({result.out_dir}); --force redoes it"]
    counts = result.counts
    now = counts.get("mentions_linked_now", counts["mentions"])
    if result.merged_shards:  # no rate or encode share: the shards did the linking
        lines = [f"link: merged {counts['mentions']} mentions from {result.merged_shards} shard(s) ({counts['chunks']} "
                 f"chunk(s)) in {result.seconds:.1f}s; the shards encoded {counts['entities_encoded']} entities, "
                 f"took {counts['entities_cached']} from the cache"]
    else:
        lines = [f"link: {counts['mentions']} mentions, {now} linked now in {result.seconds:.1f}s "
                 f"({result.mentions_per_second:.1f} mentions/s), {counts['chunks']} chunk(s), {counts['chunks_resumed']} "
                 f"resumed; entities encoded {counts['entities_encoded']}, from the cache {counts['entities_cached']}; "
                 f"{result.encode_share:.0%} of linking time in encode"]
    if not result.finished:
        return lines + [f"link: shard {shard[0]}/{shard[1]} done -> {result.out_dir}; "
                        "run `xel-cli link ... --merge` once every shard is done"]
    lines.append(format_frame(result.nil_share))
    ties = result.ties
    if ties is not None:
        lines.append(f"link: best two candidates tied for {ties['tied']} of {ties['mentions']} mention(s) "
                     f"with a runner-up ({ties['share']:.1%}; a tie keeps triage's order)")
    metrics = result.metrics
    if metrics is not None:
        lines.append(format_table(metrics))
        outside = metrics.get("gold_not_in_kb", {}).get("mentions", 0)
        lines.append(f"link: scored {metrics['scored_mentions']} of {counts['mentions']} mention(s); "
                     f"{metrics['unscored_mentions']} without gold_kb_id left out"
                     + (f", {outside} whose gold id is not in the KB counted wrong (W702)" if outside else ""))
    scored = ", gold.tab, metrics.json, doc_languages.tsv" if metrics is not None else ""
    return lines + [f"link: wrote links.parquet, links.jsonl, system.tab{scored} -> {result.out_dir}"]
