"""What `xel-cli link` prints when it finishes: the lines of a `LinkResult`.

Lines, not output: only `cli.py` prints (and `--quiet` silences them there); the stages'
lines are `pipeline.scoring.summary`.
"""

from __future__ import annotations

from pipeline.link.run import LinkResult
from pipeline.scoring.table import format_frame, format_table


def link_summary(result: LinkResult, shard: tuple[int, int] | None) -> list[str]:
    """What `xel-cli link` prints: counts and speed, then the NIL share per language and the
    scores (with --score: `result.metrics`), or, for a shard (i, n), what to run next."""
    if result.skipped:
        return [f"link: up to date ({result.out_dir}); --force redoes it"]
    counts = result.counts
    now = counts.get("mentions_linked_now", counts["mentions"])
    if result.merged_shards:  # no rate or encode share: the shards did the linking
        lines = [
            f"link: merged {counts['mentions']} mentions from {result.merged_shards} shard(s) ({counts['chunks']} "
            f"chunk(s)) in {result.seconds:.1f}s; the shards encoded {counts['entities_encoded']} entities, "
            f"took {counts['entities_cached']} from the cache"
        ]
    else:
        lines = [
            f"link: {counts['mentions']} mentions, {now} linked now in {result.seconds:.1f}s "
            f"({result.mentions_per_second:.1f} mentions/s), {counts['chunks']} chunk(s), {counts['chunks_resumed']} "
            f"resumed; entities encoded {counts['entities_encoded']}, from the cache {counts['entities_cached']}"
            # The share of the chunks linked now: with none (all resumed), it would be an earlier call's.
            + (f"; {result.encode_share:.0%} of linking time in encode" if now else "")
        ]
    if not result.finished:
        return lines + [
            f"link: shard {shard[0]}/{shard[1]} done -> {result.out_dir}; "
            "run `xel-cli link ... --merge` once every shard is done"
        ]
    lines.append(format_frame(result.nil_share))
    if result.kb is not None:
        lines.append(kb_line(result.kb))
    ties = result.ties
    if ties is not None:
        lines.append(
            f"link: best two candidates tied for {ties['tied']} of {ties['mentions']} mention(s) "
            f"with a runner-up ({ties['share']:.1%}; a tie keeps triage's order)"
        )
    metrics = result.metrics
    if metrics is not None:
        lines.append(format_table(metrics))
        outside = metrics.get("gold_not_in_kb", {}).get("mentions", 0)
        lines.append(
            f"link: scored {metrics['scored_mentions']} of {counts['mentions']} mention(s); "
            f"{metrics['unscored_mentions']} without gold_kb_id left out"
            + (f", {outside} whose gold id is not in the KB counted wrong (W702)" if outside else "")
        )
    scored = ", gold.tab, metrics.json, doc_languages.tsv" if metrics is not None else ""
    return lines + [f"link: wrote links.parquet, links.jsonl, system.tab{scored} -> {result.out_dir}"]


def kb_line(kb: dict) -> str:
    """Which KB the model was trained on and which it linked against (`Linker.kb`), and what carried over:
    alias-table ids in this KB (and through --kb-map), entity types the model never saw."""
    trained, linked = kb["trained_on"], kb["linked_against"]
    same = trained.get("fingerprint") == linked["fingerprint"]
    trained_text = (
        "the same KB"
        if same
        else f"{trained['name']} ({str(trained.get('fingerprint'))[:8]}, {trained.get('entities')} entities)"
    )
    mapped = f", {kb['alias_ids_mapped']} through --kb-map" if kb.get("kb_map") else ""
    return (
        f"link: KB {linked['name']} ({linked['fingerprint'][:8]}, {linked['entities']} entities); model trained on "
        f"{trained_text}; alias table: {kb['alias_ids'] - kb['alias_ids_missing']} of {kb['alias_ids']} KB id(s) in "
        f"this KB{mapped}; entity types unknown to the model: {kb['unknown_types']} of {kb['kb_types']} "
        f"({kb['unknown_type_entities']} entities)"
    )
