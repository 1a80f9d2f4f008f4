"""What `xel-cli link` writes: links.parquet, links.jsonl, system.tab (+ gold.tab, metrics.json with --score).

One row per mention: mention_id, doc_id, start and end (character offsets into the
document, end exclusive), lang, mention, kb_id (the KB id, or the NIL cluster id for a
NIL), score (the best candidate's ranker score, null without candidates), is_nil, what
decided it (`nil.decide_nil`): threshold (the language's NIL threshold, or with the "nota"
method the ranker's NIL score: NIL when score < threshold; null when the classifier decides),
nil_probability and nil_cut (the classifier's P(NIL) and P(right): NIL when nil_probability >
nil_cut; null otherwise), and candidates: every scored candidate as {kb_id, score (ranker),
triage_score, sources}, best first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl

from pipeline.core.errors import InputError, warn
from pipeline.core.io import atomic_path, write_json_atomic
from pipeline.formats.doc_languages import FILE_NAME as DOC_LANGUAGES
from pipeline.formats.inputs import gold_missing_from_kb
from pipeline.scoring.decisions import GOLD_TAB, METRICS_JSON, SYSTEM_TAB, score_decisions, tac_frame

logger = logging.getLogger(__name__)

LINKS_PARQUET = "links.parquet"
LINKS_JSONL = "links.jsonl"
# Every output a link may write (the manifest aside): what a finished link removes when it did not write it.
OUTPUT_NAMES = (LINKS_PARQUET, LINKS_JSONL, SYSTEM_TAB, GOLD_TAB, DOC_LANGUAGES, METRICS_JSON)
# The columns of links.parquet and of `Linker.link`'s result, with their dtypes: what an empty input gives too.
CANDIDATE = pl.Struct(
    {"kb_id": pl.String, "score": pl.Float32, "triage_score": pl.Float64, "sources": pl.List(pl.String)}
)
LINKS_SCHEMA = pl.Schema(
    {
        "mention_id": pl.String,
        "doc_id": pl.String,
        "start": pl.Int64,
        "end": pl.Int64,
        "lang": pl.String,
        "mention": pl.String,
        "kb_id": pl.String,
        "score": pl.Float64,
        "is_nil": pl.Boolean,
        "threshold": pl.Float64,
        "nil_probability": pl.Float64,
        "nil_cut": pl.Float64,
        "candidates": pl.List(CANDIDATE),
    }
)


def links_table(clustered: pl.DataFrame) -> pl.DataFrame:
    """The links of decided, NIL-clustered mentions (`NilPolicy.cluster` output), in input order."""
    return clustered.select(
        "mention_id",
        "doc_id",
        pl.col("doc_start").alias("start"),
        pl.col("doc_end").alias("end"),
        "lang",
        "mention",
        pl.col("system_id").alias("kb_id"),
        pl.col("best_score").alias("score"),
        "is_nil",
        "threshold",
        "nil_probability",
        "nil_cut",
        "candidates",
    )


def nil_share(clustered: pl.DataFrame) -> pl.DataFrame:
    """(lang, mentions, nil_share) per language, sorted, then `all`."""
    aggregations = [pl.len().alias("mentions"), pl.col("is_nil").mean().alias("nil_share")]
    by_language = clustered.group_by("lang").agg(aggregations).sort("lang")
    overall = clustered.select(pl.lit("all").alias("lang"), *aggregations)
    return pl.concat([by_language, overall.cast(by_language.schema)])


def gold_not_in_kb(evaluated: pl.DataFrame, kb_ids: pl.LazyFrame, mentions_path: Path, kb_path: Path) -> dict:
    """{"kb_ids", "mentions"}: gold KB ids (NIL aside) of `evaluated` that `kb_ids` (column kb_id)
    lacks, and the mentions that carry them; warned once (W702) with an example, as triage's W102.

    No link can be right for such a mention, so the score counts it as an error.
    """
    ids, carried_by, example = gold_missing_from_kb(evaluated, kb_ids)
    if ids.len():
        warn(logger, "W702", ids=ids.len(), mentions=carried_by, path=mentions_path, kb=kb_path, example=example)
    return {"kb_ids": ids.len(), "mentions": carried_by}


def write_outputs(
    chunk_paths: list[Path],
    clustered: pl.DataFrame,
    out_dir: Path,
    score: bool,
    mentions_path: Path,
    kb_ids: Callable[[], tuple[pl.LazyFrame, Path]] | None = None,
) -> tuple[list[str], dict | None]:
    """Write the outputs (each atomically); returns (file names, metrics or None).

    `clustered` is every mention without its candidate lists (`NilPolicy.cluster` output);
    the links files are written chunk by chunk from `chunk_paths`, so only one chunk's
    candidate lists are in memory at a time. With `score`, mentions that carry a gold id
    are scored as evaluate scores its split (`gold.tab`, `metrics.json`); E709 when none does.
    metrics.json then also says how many mentions were scored (`scored_mentions`), left out
    for want of a gold id (`unscored_mentions`), and carry a gold id the KB lacks
    (`gold_not_in_kb`, from `kb_ids()`: the KB's ids and its path; W702).
    """
    import pyarrow.parquet as pq

    from pipeline.formats.doc_languages import write_doc_languages
    from pipeline.formats.tac import write_tab

    system_ids = clustered.select("mention_id", "system_id")
    with atomic_path(out_dir / LINKS_PARQUET) as parquet_path, atomic_path(out_dir / LINKS_JSONL) as jsonl_path:
        writer = None
        try:
            with open(jsonl_path, "wb") as jsonl:
                for path in chunk_paths:
                    links = links_table(pl.read_parquet(path).join(system_ids, on="mention_id", how="left"))
                    table = links.to_arrow()
                    writer = writer or pq.ParquetWriter(parquet_path, table.schema, compression="zstd")
                    writer.write_table(table)
                    links.write_ndjson(jsonl)
        finally:
            if writer is not None:
                writer.close()
    write_tab(tac_frame(clustered, "system_id"), out_dir / SYSTEM_TAB)
    outputs = [LINKS_PARQUET, LINKS_JSONL, SYSTEM_TAB]
    if not score:
        return outputs, None
    evaluated = clustered.filter(pl.col("gold_kb_id").is_not_null())
    if evaluated.is_empty():
        raise InputError("E709", path=mentions_path)
    gold_tab, _, languages, metrics = score_decisions(evaluated)
    metrics["scored_mentions"] = evaluated.height
    metrics["unscored_mentions"] = clustered.height - evaluated.height  # no gold_kb_id: left out of the score
    if kb_ids is not None:
        known, kb_path = kb_ids()
        metrics["gold_not_in_kb"] = gold_not_in_kb(evaluated, known, mentions_path, kb_path)
    write_tab(gold_tab, out_dir / GOLD_TAB)
    write_doc_languages(languages, out_dir / DOC_LANGUAGES)  # `xel-cli score` reads it beside gold.tab
    write_json_atomic(out_dir / METRICS_JSON, metrics)
    return outputs + [GOLD_TAB, DOC_LANGUAGES, METRICS_JSON], metrics


def remove_stale_outputs(out_dir: Path, outputs: list[str]) -> list[str]:
    """Delete the outputs an earlier link left in `out_dir` that this one did not write (`outputs`):
    e.g. gold.tab and metrics.json of a --score link, under a link without it. Returns their names.

    Only `OUTPUT_NAMES`, never another file; called once this link's own outputs are written and
    before its manifest, so a crash in between leaves no manifest and the rerun redoes it.
    """
    stale = [name for name in OUTPUT_NAMES if name not in outputs and (out_dir / name).is_file()]
    for name in stale:
        (out_dir / name).unlink(missing_ok=True)
    if stale:
        logger.info("removed %s of an earlier link from %s", ", ".join(stale), out_dir)
    return stale
