"""Triage: the top-k candidate entities of every mention.

Sources, each switchable and recorded per candidate:
- `prior`: P(e|m) from training-split mentions only (never dev/test), keyed by the
  folded and by the romanised mention string;
- `kb_name`: exact match of the folded or romanised string with a KB name or alias;
- `fuzzy`: rapidfuzz similarity of romanised strings against every KB name, alias and
  training surface form;
- `dense`: nearest KB names by cosine of the run encoder's mean-pooled name vectors,
  which crosses scripts where romanisation cannot (`奥巴马` -> `Barack Obama`);
- `external`: a CSV/TSV of candidates from an outside triage;
- `oracle`: the gold entity added when missing (the paper's Multi+Or).
A candidate's score is the sum of its sources' scores (each in [0, 1]).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from pipeline import schema
import torch

from pipeline.config import EncoderConfig, RunConfig, TriageConfig, to_dict
from pipeline.errors import InputError
from pipeline.inputs import check_gold_in_kb, load_mentions, write_entities
from pipeline.io import file_fingerprint, write_json_atomic, write_parquet_atomic
from pipeline.stage import StageResult, invalidate, is_up_to_date, stage_key, write_manifest
from pipeline.textnorm import add_keys

logger = logging.getLogger(__name__)

STAGE = "triage"
STAGE_VERSION = 1
RECALL_AT = (1, 5, 10, 30, 100)
# Queries per rapidfuzz cdist call: bounds the (queries x names) score matrix in memory.
FUZZY_QUERY_BLOCK = 2048


def surface_forms(entities: pl.DataFrame) -> pl.DataFrame:
    """(surface, kb_id) for every KB name and alias."""
    names = entities.select(pl.col("name").alias("surface"), "kb_id")
    aliases = entities.select("kb_id", pl.col("alias_texts").alias("surface")).explode("surface").drop_nulls()
    return pl.concat([names, aliases.select("surface", "kb_id")]).unique()


def prior_candidates(mentions: pl.DataFrame, training: pl.DataFrame) -> pl.DataFrame:
    """P(e|m) from training mentions, matched on folded, then romanised strings."""
    linked = training.filter(pl.col("gold_kb_id").is_not_null() & (pl.col("gold_kb_id") != schema.NIL_ID))
    parts = []
    for key in ("mention_fold", "mention_roman"):
        counts = linked.group_by(key, "gold_kb_id").agg(pl.len().alias("n"))
        priors = counts.with_columns((pl.col("n") / pl.col("n").sum().over(key)).alias("score"))
        parts.append(mentions.select("mention_id", key).join(priors, on=key)
                     .select("mention_id", pl.col("gold_kb_id").alias("kb_id"), "score"))
    best = pl.concat(parts).group_by("mention_id", "kb_id").agg(pl.col("score").max())
    return best.with_columns(pl.lit("prior").alias("source"))


def kb_name_candidates(mentions: pl.DataFrame, surfaces: pl.DataFrame) -> pl.DataFrame:
    """Exact matches of the folded or the romanised mention string with a KB name or alias."""
    parts = []
    for key in ("fold", "roman"):
        parts.append(mentions.select("mention_id", pl.col(f"mention_{key}").alias("key"))
                     .join(surfaces.select(pl.col(f"surface_{key}").alias("key"), "kb_id").unique(), on="key")
                     .select("mention_id", "kb_id"))
    return pl.concat(parts).unique().with_columns(pl.lit(1.0).alias("score"), pl.lit("kb_name").alias("source"))


def fuzzy_candidates(mentions: pl.DataFrame, surfaces: pl.DataFrame, k: int, min_score: float) -> pl.DataFrame:
    """Best fuzzy matches of each distinct romanised mention string among all surface forms."""
    # Sorted: `unique` order varies from run to run, and ties at the top-`keep` cut would follow it.
    queries = mentions.select(pl.col("mention_roman")).unique().filter(pl.col("mention_roman") != "")["mention_roman"].sort()
    choices = surfaces.select("surface_roman").unique().filter(pl.col("surface_roman") != "")["surface_roman"].sort()
    if queries.is_empty() or choices.is_empty():
        return pl.DataFrame(schema={"mention_id": pl.String, "kb_id": pl.String, "score": pl.Float64, "source": pl.String})
    choice_list = choices.to_list()
    keep = min(len(choice_list), 4 * k)
    rows_query, rows_choice, rows_score = [], [], []
    for offset in range(0, len(queries), FUZZY_QUERY_BLOCK):
        block = queries.slice(offset, FUZZY_QUERY_BLOCK).to_list()
        matrix = process.cdist(block, choice_list, scorer=fuzz.WRatio, dtype=np.uint8,
                               score_cutoff=int(min_score), workers=-1)
        # The `keep` highest scores of each row (uint8: partition from the top, never negate).
        top = np.argpartition(matrix, matrix.shape[1] - keep, axis=1)[:, -keep:]
        top_scores = np.take_along_axis(matrix, top, axis=1)
        hit_rows, hit_cols = np.nonzero(top_scores >= min_score)
        rows_query.extend(block[i] for i in hit_rows)
        rows_choice.append(top[hit_rows, hit_cols])
        rows_score.append(top_scores[hit_rows, hit_cols])
    matches = pl.DataFrame({
        "mention_roman": rows_query,
        "surface_roman": np.asarray(choice_list, dtype=object)[np.concatenate(rows_choice)].tolist() if rows_choice else [],
        "score": (np.concatenate(rows_score).astype(np.float64) / 100.0) if rows_score else [],
    }, schema={"mention_roman": pl.String, "surface_roman": pl.String, "score": pl.Float64})
    by_entity = matches.join(surfaces.select("surface_roman", "kb_id").unique(), on="surface_roman")
    return (mentions.select("mention_id", "mention_roman").join(by_entity, on="mention_roman")
            .group_by("mention_id", "kb_id").agg(pl.col("score").max())
            .with_columns(pl.lit("fuzzy").alias("source")))


def dense_candidates(mentions: pl.DataFrame, surfaces: pl.DataFrame, encoder_config: EncoderConfig,
                     config: TriageConfig) -> pl.DataFrame:
    """Nearest KB names and aliases of each distinct mention string by encoder cosine similarity."""
    from pipeline.encoder import embed_texts, load_encoder

    encoder = load_encoder(encoder_config)
    # Sorted, so batches (and with them float rounding) are the same on every run.
    queries = mentions["mention"].unique().sort().to_list()
    names = surfaces.select("surface", "kb_id").unique()
    choices = names["surface"].unique().sort().to_list()
    logger.info("dense triage: embedding %d mention strings and %d KB names", len(queries), len(choices))
    embed = lambda texts: torch.from_numpy(embed_texts(  # noqa: E731
        encoder, [config.dense_prefix + t for t in texts], encoder_config.max_name_tokens, encoder_config.batch_tokens))
    query_vectors, choice_vectors = embed(queries), embed(choices)
    keep = min(config.dense_k, len(choices))
    rows_query, rows_choice, rows_score = [], [], []
    for offset in range(0, len(queries), FUZZY_QUERY_BLOCK):
        similarity = query_vectors[offset: offset + FUZZY_QUERY_BLOCK] @ choice_vectors.T  # (q, c)
        top_scores, top_index = similarity.topk(keep, dim=1)
        rows_query.append(np.repeat(np.arange(offset, offset + len(similarity)), keep))
        rows_choice.append(top_index.reshape(-1).numpy())
        rows_score.append(top_scores.reshape(-1).numpy())
    matches = pl.DataFrame({
        "mention": np.asarray(queries, dtype=object)[np.concatenate(rows_query)].tolist(),
        "surface": np.asarray(choices, dtype=object)[np.concatenate(rows_choice)].tolist(),
        "score": np.clip((np.concatenate(rows_score).astype(np.float64) - config.dense_floor) / (1 - config.dense_floor), 0, 1),
    }, schema={"mention": pl.String, "surface": pl.String, "score": pl.Float64}).filter(pl.col("score") > 0)
    return (mentions.select("mention_id", "mention").join(matches, on="mention").join(names, on="surface")
            .group_by("mention_id", "kb_id").agg(pl.col("score").max()).with_columns(pl.lit("dense").alias("source")))


def external_candidates(path: Path, mentions: pl.DataFrame) -> pl.DataFrame:
    """Candidates from an outside triage: CSV or TSV with mention_id, kb_id, score (header row)."""
    separator = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        frame = pl.read_csv(path, separator=separator, schema_overrides={"mention_id": pl.String, "kb_id": pl.String})
    except FileNotFoundError:
        raise InputError("E108", path=path) from None
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        raise InputError("E112", path=path, line="?", detail=f"cannot be parsed as {'TSV' if separator == chr(9) else 'CSV'}: {str(exc).splitlines()[0]}") from None
    for column in ("mention_id", "kb_id", "score"):
        if column not in frame.columns:
            raise InputError("E112", path=path, line=1, detail=f"header lacks column '{column}'; expected mention_id, kb_id, score")
    frame = frame.with_row_index("line", offset=2)
    score = frame["score"].cast(pl.Float64, strict=False)
    bad = frame.filter(score.is_null() | frame["kb_id"].is_null() | frame["mention_id"].is_null()).head(1)
    if not bad.is_empty():
        row = bad.row(0, named=True)
        raise InputError("E112", path=path, line=row["line"], detail=f"needs a mention_id, a kb_id and a numeric score, got {row}")
    unknown = frame.join(mentions.select("mention_id"), on="mention_id", how="anti")
    if unknown.height:
        # Outside triage often covers a larger mention set than this run: warned, not refused.
        logger.warning("%s: ignoring %d candidate row(s) whose mention_id is not among this run's mentions "
                       "(first: %r on line %d)", path, unknown.height, unknown["mention_id"][0], unknown["line"][0])
    return (frame.with_columns(score.alias("score")).join(mentions.select("mention_id"), on="mention_id", how="semi")
            .select("mention_id", "kb_id", pl.col("score").clip(0, 1), pl.lit("external").alias("source")))


def merge_candidates(pieces: list[pl.DataFrame], mentions: pl.DataFrame, k: int, oracle: bool) -> pl.DataFrame:
    """One ranked list per mention: scores summed over sources, top k, gold flagged."""
    rows = pl.concat([p.select("mention_id", "kb_id", pl.col("score").cast(pl.Float64), "source") for p in pieces])
    merged = (rows.group_by("mention_id", "kb_id")
              .agg(pl.col("score").sum(), pl.col("source").unique().sort().alias("sources"))
              .sort(["mention_id", "score", "kb_id"], descending=[False, True, False])
              .with_columns(pl.int_range(1, pl.len() + 1).over("mention_id").cast(pl.Int32).alias("rank"))
              .filter(pl.col("rank") <= k))
    gold = mentions.select("mention_id", "gold_kb_id")
    if oracle:
        linked = gold.filter(pl.col("gold_kb_id").is_not_null() & (pl.col("gold_kb_id") != schema.NIL_ID))
        missing = linked.join(merged.select("mention_id", pl.col("kb_id").alias("gold_kb_id")), on=["mention_id", "gold_kb_id"], how="anti")
        # The gold takes the last place of a full list, so the list keeps k entries.
        merged = merged.filter(~(pl.col("mention_id").is_in(missing["mention_id"].implode()) & (pl.col("rank") == k)))
        sizes = merged.group_by("mention_id").agg(pl.len().alias("n"))
        added = missing.join(sizes, on="mention_id", how="left").select(
            "mention_id", pl.col("gold_kb_id").alias("kb_id"), pl.lit(0.0).alias("score"),
            pl.lit(["oracle"]).cast(pl.List(pl.String)).alias("sources"),
            (pl.col("n").fill_null(0) + 1).cast(pl.Int32).alias("rank"))
        merged = pl.concat([merged.select(added.columns), added])
    flagged = merged.join(gold, on="mention_id", how="left").with_columns(
        pl.when(pl.col("gold_kb_id").is_null()).then(None).otherwise(pl.col("kb_id") == pl.col("gold_kb_id")).alias("is_gold"))
    return flagged.select(list(schema.CANDIDATES)).cast(schema.CANDIDATES).sort("mention_id", "rank")


def recall_report(mentions: pl.DataFrame, candidates: pl.DataFrame, k: int) -> pl.DataFrame:
    """Gold recall@n per language and split, over mentions whose gold is a KB entity."""
    gold_rank = candidates.filter(pl.col("is_gold")).group_by("mention_id").agg(pl.col("rank").min().alias("gold_rank"))
    counts = candidates.group_by("mention_id").agg(pl.len().alias("n_candidates"))
    table = (mentions.filter(pl.col("gold_kb_id").is_not_null())
             .join(gold_rank, on="mention_id", how="left").join(counts, on="mention_id", how="left")
             .with_columns((pl.col("gold_kb_id") == schema.NIL_ID).alias("is_nil"), pl.col("n_candidates").fill_null(0)))
    levels = [n for n in RECALL_AT if n <= k] + ([k] if k not in RECALL_AT else [])
    linked = ~pl.col("is_nil")
    aggregations = [pl.len().alias("mentions"), pl.col("is_nil").mean().alias("nil_share"),
                    pl.col("n_candidates").mean().alias("candidates_per_mention")]
    aggregations += [((pl.col("gold_rank") <= n) & linked).sum().truediv(linked.sum()).alias(f"recall@{n}") for n in levels]
    by_group = table.group_by("lang", "split").agg(aggregations)
    overall = table.select(pl.lit("all").alias("lang"), pl.lit("all").alias("split"), *aggregations)
    return pl.concat([by_group.sort("lang", "split"), overall])


def run(config: RunConfig, force: bool = False) -> StageResult:
    started = time.time()
    out_dir = config.stage_dir(STAGE)
    inputs = config.inputs
    input_paths = {name: getattr(inputs, name) for name in
                   ("kb", "mentions", "docs", "tac_train", "tac_dev", "tac_test", "tac_source", "candidates")
                   if getattr(inputs, name) is not None}
    for name, path in input_paths.items():
        if not path.exists():
            raise InputError("E108", path=path)
    fingerprints = {name: file_fingerprint(path) for name, path in input_paths.items()}
    if config.triage.use_dense:
        from pipeline.encoder import encoder_identity, resolve_encoder_path

        fingerprints["encoder"] = encoder_identity(resolve_encoder_path(config.encoder.name))
    settings = {"inputs": {k: v for k, v in to_dict(inputs).items() if k not in input_paths and v is not None},
                "triage": to_dict(config.triage)}
    if config.triage.use_dense:
        settings["encoder"] = {"max_name_tokens": config.encoder.max_name_tokens}
    key = stage_key(STAGE, STAGE_VERSION, settings, fingerprints)
    if not force and is_up_to_date(out_dir, key):
        return StageResult(STAGE, out_dir, skipped=True, seconds=time.time() - started)
    invalidate(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    mentions = load_mentions(inputs)
    logger.info("read %d mentions", mentions.height)
    entity_count = write_entities(inputs.kb, out_dir / "entities.parquet")
    if entity_count == 0:
        raise InputError("E107", path=inputs.kb)
    entities = pl.read_parquet(out_dir / "entities.parquet")
    check_gold_in_kb(mentions, entities.lazy(), inputs.mentions)

    keyed = add_keys(mentions, "mention")
    surfaces = add_keys(surface_forms(entities), "surface")
    training = keyed.filter(pl.col("split") == "train")
    triage = config.triage
    pieces: list[pl.DataFrame] = []
    if triage.use_priors:
        pieces.append(prior_candidates(keyed, training))
    if triage.use_kb_names:
        pieces.append(kb_name_candidates(keyed, surfaces))
    if triage.use_fuzzy:
        # Training surface forms join the KB's own names, so a fuzzy match can reach them too.
        learned = training.filter(pl.col("gold_kb_id").is_not_null() & (pl.col("gold_kb_id") != schema.NIL_ID)).select(
            pl.col("mention").alias("surface"), pl.col("gold_kb_id").alias("kb_id")).unique()
        all_surfaces = pl.concat([surfaces, add_keys(learned, "surface")], how="diagonal_relaxed")
        pieces.append(fuzzy_candidates(keyed, all_surfaces, triage.k, triage.fuzzy_min_score))
    if triage.use_dense:
        pieces.append(dense_candidates(keyed, surfaces, config.encoder, triage))
    if inputs.candidates is not None:
        pieces.append(external_candidates(inputs.candidates, mentions))
    if not pieces:
        pieces.append(pl.DataFrame(schema={"mention_id": pl.String, "kb_id": pl.String, "score": pl.Float64, "source": pl.String}))
    known_ids = entities.select("kb_id")
    pieces = [p.join(known_ids, on="kb_id", how="semi") for p in pieces]
    candidates = merge_candidates(pieces, mentions, triage.k, triage.oracle)

    write_parquet_atomic(mentions.drop("line").select(list(schema.MENTIONS) + ["named"]), out_dir / "mentions.parquet")
    write_parquet_atomic(candidates, out_dir / "candidates.parquet")
    report = recall_report(mentions, candidates, triage.k)
    write_json_atomic(out_dir / "report.json", {"recall": report.to_dicts()})
    counts = {"mentions": mentions.height, "entities": entity_count, "candidates": candidates.height}
    write_manifest(out_dir, stage=STAGE, key=key, inputs=fingerprints, settings=settings, counts=counts,
                   outputs=["mentions.parquet", "entities.parquet", "candidates.parquet", "report.json"], started=started)
    return StageResult(STAGE, out_dir, skipped=False, seconds=time.time() - started, counts=counts,
                       summary={"recall": report})
