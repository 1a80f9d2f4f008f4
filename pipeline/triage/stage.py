"""Triage: the top-k candidate entities of every mention, with gold recall@k per language.

The stage orchestrates; candidate generation (the sources, their merge, the KB indexes)
lives in `pipeline/candidates/`, which `xel-cli link` runs too, so both propose the same
candidates. The KB-side indexes are built once per KB file and reused.
"""

from __future__ import annotations

import logging
import shutil

import polars as pl

from pipeline.candidates.crossfit import crossfit_pieces
from pipeline.candidates.generate import LearnedSources, candidate_pieces, merge_candidates
from pipeline.candidates.kb_index import KbIndex, kb_entities, names_index
from pipeline.core import schema
from pipeline.core.config import RunConfig, to_dict
from pipeline.core.errors import InputError
from pipeline.core.io import atomic_path, file_fingerprint, write_json_atomic
from pipeline.core.manifest import StageIdentity, StageResult, StageRun
from pipeline.core.store import kb_index_root
from pipeline.formats import triage_tables
from pipeline.formats.inputs import check_gold_in_kb, load_mentions
from pipeline.model.aliases import alias_table

logger = logging.getLogger(__name__)

STAGE = "triage"
# 4: folding drops format characters and tatweel (`textnorm.fold`), so candidates may change;
# 5: folding makes Persian keheh/yeh and alef maksura Arabic kaf/yeh.
STAGE_VERSION = 5
RECALL_AT = (1, 5, 10, 30, 100)


def recall_report(mentions: pl.DataFrame, candidates: pl.DataFrame, k: int) -> pl.DataFrame:
    """Gold recall@n per language and split, over mentions whose gold is a KB entity."""
    gold_rank = candidates.filter(pl.col("is_gold")).group_by("mention_id").agg(pl.col("rank").min().alias("gold_rank"))
    counts = candidates.group_by("mention_id").agg(pl.len().alias("n_candidates"))
    table = (
        mentions.filter(pl.col("gold_kb_id").is_not_null())
        .join(gold_rank, on="mention_id", how="left")
        .join(counts, on="mention_id", how="left")
        .with_columns((pl.col("gold_kb_id") == schema.NIL_ID).alias("is_nil"), pl.col("n_candidates").fill_null(0))
    )
    levels = [n for n in RECALL_AT if n <= k] + ([k] if k not in RECALL_AT else [])
    linked = ~pl.col("is_nil")
    aggregations = [
        pl.len().alias("mentions"),
        pl.col("is_nil").mean().alias("nil_share"),
        pl.col("n_candidates").mean().alias("candidates_per_mention"),
    ]
    aggregations += [
        ((pl.col("gold_rank") <= n) & linked).sum().truediv(linked.sum()).alias(f"recall@{n}") for n in levels
    ]
    by_group = table.group_by("lang", "split").agg(aggregations)
    overall = table.select(pl.lit("all").alias("lang"), pl.lit("all").alias("split"), *aggregations)
    return pl.concat([by_group.sort("lang", "split"), overall])


def identity(config: RunConfig) -> StageIdentity:
    """What triage's key hashes, as every stage gives it: every input file's fingerprint (E108 for one that
    is not there) and, with the dense source, the encoder's identity; the [inputs] and [triage] settings (and
    the encoder's name length, which the dense source embeds with)."""
    inputs = config.inputs
    input_paths = {
        name: getattr(inputs, name)
        for name in ("kb", "mentions", "docs", "tac_train", "tac_dev", "tac_test", "tac_source", "candidates")
        if getattr(inputs, name) is not None
    }
    for name, path in input_paths.items():
        if not path.exists():
            raise InputError("E108", path=path)
    fingerprints = {name: file_fingerprint(path) for name, path in input_paths.items()}
    if config.triage.use_dense:
        from pipeline.encoders.encoder import configured_identity

        fingerprints["encoder"] = configured_identity(config.encoder)
    settings = {
        "inputs": {k: v for k, v in to_dict(inputs).items() if k not in input_paths and v is not None},
        "triage": to_dict(config.triage),
    }
    if not config.triage.crossfit_folds:
        del settings["triage"]["crossfit_folds"]  # added later: off, runs made before it keep their keys
    if config.triage.use_dense:
        settings["encoder"] = {"max_name_tokens": config.encoder.max_name_tokens}
    return StageIdentity(STAGE, STAGE_VERSION, settings, fingerprints)


def check_config(config: RunConfig) -> None:
    """E501 when the dense source is on and encoder.name names no model folder (`encoder.check_source`)."""
    if config.triage.use_dense:
        from pipeline.encoders.encoder import check_source

        check_source(config.encoder.name, "encoder.name")


def run(config: RunConfig, force: bool = False) -> StageResult:
    """Read the mentions and the KB, propose every mention's top-k candidates (`pipeline.candidates`) and
    write the triage tables (`triage_tables`) and report.json (`recall_report`). Skipped when up to date."""
    out_dir, inputs = config.stage_dir(STAGE), config.inputs
    expected = identity(config)
    fingerprints = expected.inputs
    stage_run = StageRun(out_dir, STAGE, STAGE_VERSION, expected.settings, fingerprints, force)
    if stage_run.up_to_date:
        return stage_run.skipped()
    # The KB's indexes live in the store that link reads too (`pipeline.core.store`), not in the run.
    index_root = kb_index_root(fingerprints["kb"])
    # Read and check the inputs (and load the dense source's encoder) before the old outputs are touched:
    # a refused run leaves a finished triage as it was.
    mentions = load_mentions(inputs)
    logger.info("read %d mentions", mentions.height)
    entities_path = kb_entities(inputs.kb, index_root, fingerprints["kb"])
    entities = pl.read_parquet(entities_path)  # the store's file, checked
    check_gold_in_kb(mentions, entities.lazy(), inputs.mentions)
    encoder = _dense_encoder(config)
    stage_run.begin()
    with atomic_path(triage_tables.path(out_dir, triage_tables.ENTITIES)) as temp_path:
        shutil.copyfile(entities_path, temp_path)  # the run's copy is the same bytes
    kb = KbIndex(
        names_index(entities, index_root, fingerprints["kb"]), entities.select("kb_id"), index_root, fingerprints["kb"]
    )
    learned = LearnedSources.prepare(
        alias_table(mentions.filter(pl.col("split") == "train")), config.triage, config.encoder
    )
    propose = crossfit_pieces if config.triage.crossfit_folds else candidate_pieces
    pieces = propose(mentions, kb, learned, config.triage, config.encoder, inputs.candidates, encoder)
    candidates = merge_candidates(pieces, mentions, config.triage.k, config.triage.oracle)

    triage_tables.write(out_dir, mentions, candidates)
    report = recall_report(mentions, candidates, config.triage.k)
    write_json_atomic(out_dir / "report.json", {"recall": report.to_dicts()})
    counts = {"mentions": mentions.height, "entities": entities.height, "candidates": candidates.height}
    return stage_run.finish(counts, [*triage_tables.FILES, "report.json"], summary={"recall": report})


def _dense_encoder(config: RunConfig):
    """The dense source's encoder (`encoders.encoder.load_encoder`; E501 when it cannot be loaded), or None
    when that source is off."""
    if not config.triage.use_dense:
        return None
    from pipeline.encoders.encoder import load_encoder

    return load_encoder(config.encoder)
