"""rerank: fine-tune the reader on each mention's top candidates, then score the dev and test mentions.

Beyond the paper (docs/reader.md). Reads triage's tables (mentions with their context,
the KB's names, types and descriptions, candidates) and, with `candidates = "ranker"`,
train's ranker, whose scores pick each mention's `top_k` candidates (triage's rank with
`candidates = "triage"`). Trains on the training split's mentions with gold (NIL ones,
and linked ones whose gold is among their candidates, a share of them with the gold
hidden and the label NIL); dev micro-average picks the best epoch.

Outputs (the run's `rerank/` folder): `reader/` (the best epoch's reader, `pipeline.model.reader`),
`reader_scores.parquet` (dev and test mentions: mention_id, kb_id, slot, score, nil_score),
`history.parquet`, and the manifest, last. `checkpoints/last.pt` (after every epoch) lets a killed
run resume; it is deleted once the manifest is written. A finished run of the same key that lost an
output other than the reader (its scores, say) is rescored from `reader/` and `history.parquet`,
not retrained.

Everything that can fail before training (the encoder, the sequence layout, the examples) is
checked before the old manifest is removed: a refused run leaves a finished stage as it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.core import distributed
from pipeline.core.checkpoints import discard_checkpoint, say_resumed
from pipeline.core.config import RunConfig, to_dict
from pipeline.core.distributed import World
from pipeline.core.errors import CacheError, ConfigError, InputError, warn
from pipeline.core.io import collect_checked, write_parquet_atomic
from pipeline.core.manifest import StageIdentity, StageResult, StageRun, read_manifest, upstream_key
from pipeline.core.progress import progress as progress_counter
from pipeline.formats import triage_tables
from pipeline.model import reader_inputs
from pipeline.model.model_file import save_torch
from pipeline.model.reader import (
    READER_JSON,
    SCORES_FILE,
    Reader,
    ReaderExamples,
    build_examples,
    freeze_lower_layers,
    load_reader,
    new_reader,
    save_reader,
    score_mentions,
    too_deep,
)
from pipeline.model.reader_inputs import Layout
from pipeline.rerank import training

logger = logging.getLogger(__name__)

STAGE = "rerank"
STAGE_VERSION = 1
READER = "reader"
SCORES = SCORES_FILE
HISTORY = "history.parquet"
CHECKPOINT = "checkpoints/last.pt"
SCORED_SPLITS = training.SCORED_SPLITS
# Settings that change speed or where it runs, not the reader.
NOT_KEYED = ("enabled", "device")


def encoder_path(config: RunConfig) -> str:
    """The folder (or hub name) of the transformer the reader starts from: rerank.encoder, else the run's."""
    from pipeline.encoders.encoder import resolve_encoder_path

    return resolve_encoder_path(config.rerank.encoder or config.encoder.name)


def encoder_setting(config: RunConfig) -> str:
    """The config key that names the reader's starting encoder, as a message names it."""
    return "rerank.encoder" if config.rerank.encoder else "encoder.name"


def identity(config: RunConfig) -> StageIdentity:
    """What rerank's key hashes (`stage_identity`), as every stage gives it."""
    inputs, settings = stage_identity(config)
    return StageIdentity(STAGE, STAGE_VERSION, settings, inputs)


def stage_identity(config: RunConfig) -> tuple[dict[str, str], dict]:
    """(inputs, settings) of rerank's key: triage's key, train's (when the ranker picks candidates), the
    starting encoder's content identity, and the [rerank] settings that change the reader."""
    from pipeline.encoders.encoder import encoder_identity

    inputs = {"triage": upstream_key(config.stage_dir("triage"), "triage")}
    if config.rerank.candidates == "ranker":
        inputs["train"] = upstream_key(config.stage_dir("train"), "train")
    inputs["encoder"] = encoder_identity(encoder_path(config))
    settings = {k: v for k, v in to_dict(config.rerank).items() if k not in NOT_KEYED}
    for added_later in ("triage_evidence", "encoder_layers"):
        if not settings[added_later]:
            del settings[added_later]  # off, readers trained before the setting keep their keys
    return inputs, settings


def check_config(config: RunConfig) -> None:
    """E203 when rerank.enabled is false (evaluate would not read what it makes); E501 when the starting
    encoder names no model folder (`encoder.check_source`). Said before anything upstream is checked
    (`stages.run_stage`)."""
    from pipeline.encoders.encoder import check_source

    if not config.rerank.enabled:
        raise ConfigError(
            "E203",
            where="[rerank]",
            field="enabled",
            value=False,
            reason="evaluate reads the reader only when it is on: set rerank.enabled = true "
            "(--set rerank.enabled=true)",
        )
    check_source(config.rerank.encoder or config.encoder.name, encoder_setting(config))
    _check_depth(config)


def _check_depth(config: RunConfig) -> None:
    """E203 for encoder_layers or freeze_layers past the starting encoder's depth (its config.json's
    num_hidden_layers), said before any stage runs. An encoder that is no folder here yet (a hub name, the
    default before its first build) is checked when the reader is built (`reader.keep_lower_layers`)."""
    from pipeline.encoders.build import DEFAULT_ENCODER, ENCODER_FOLDER, default_cache_dir

    name = config.rerank.encoder or config.encoder.name
    folder = default_cache_dir() / ENCODER_FOLDER if name == DEFAULT_ENCODER else Path(name).expanduser()
    try:
        depth = json.loads((folder / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for field in ("encoder_layers", "freeze_layers"):
        value = getattr(config.rerank, field)
        if isinstance(depth, int) and value > depth:
            raise too_deep(field, value, f"only {depth} layers")


def run(config: RunConfig, force: bool = False) -> StageResult:
    """Train the reader and score dev and test; under torchrun as one of WORLD_SIZE data-parallel processes.

    E203 when rerank.enabled is false (`check_config`)."""
    check_config(config)
    world = distributed.world_from_environment()
    with distributed.process_group(world, config.rerank.device):
        return _rerank(config, force, world)


def _rerank(config: RunConfig, force: bool, world: World) -> StageResult:
    out_dir = config.stage_dir(STAGE)
    inputs_keys, settings = stage_identity(config)
    stage_run = StageRun(out_dir, STAGE, STAGE_VERSION, settings, inputs_keys, force)
    checkpoint_path = out_dir / CHECKPOINT
    if distributed.broadcast(stage_run.up_to_date if world.is_main else None, world):
        if world.is_main:
            discard_checkpoint(checkpoint_path)  # left by a run killed after its manifest
        return stage_run.skipped()
    device = distributed.training_device(config.rerank.device, world)
    reader, tokenizer, data = _prepare(config, device)  # what can fail, before the old outputs are touched
    trained = None if force or not world.is_main else finished_training(out_dir, stage_run.key)
    rescore = distributed.broadcast(trained is not None if world.is_main else None, world)
    if world.is_main:
        stage_run.begin(checkpoint_path.parent)
        if force:
            checkpoint_path.unlink(missing_ok=True)
    distributed.barrier(world)
    if not rescore:
        trained = fit(reader, tokenizer, data, config, stage_run.key, world)
    result = StageResult(STAGE, out_dir, skipped=False, seconds=time.time() - stage_run.started, counts=data.counts)
    if world.is_main:
        result = finish(stage_run, data, trained, device, world)
        discard_checkpoint(checkpoint_path)  # only now that the manifest is written
    distributed.barrier(world)
    return result


def _prepare(config: RunConfig, device: torch.device) -> tuple[Reader, object, training.TrainingSet]:
    """(a fresh reader from the starting encoder, its tokenizer, the mentions' examples and what each is for):
    E501 (encoder), E203 (layout, encoder_layers, freeze_layers), E507 (nothing to learn) and the upstream
    tables' errors."""
    reader, tokenizer = new_reader(
        encoder_path(config),
        device,
        config.rerank.seed,
        encoder_setting(config),
        config.rerank.triage_evidence,
        config.rerank.encoder_layers,
    )
    freeze_lower_layers(reader, config.rerank.freeze_layers)
    layout = sequence_layout(config)
    check_positions(reader, layout)
    mentions, examples = read_examples(config, tokenizer, layout, device)
    data = training.TrainingSet.of(
        examples, mentions["split"].to_numpy(), mentions["gold_kb_id"].is_not_null().to_numpy()
    )
    if len(data.train_rows) == 0:
        raise InputError(
            "E507",
            path=triage_tables.path(config.stage_dir("triage"), triage_tables.MENTIONS),
            detail="no training mention is NIL or has its gold among its top candidates, so the reader "
            "has nothing to learn from",
        )
    return reader, tokenizer, data


def finished_training(out_dir: Path, key: str) -> training.Trained | None:
    """The training of a finished run of this `key` whose manifest is still there though an output is not
    (its scores were deleted, say): its history and best epoch, read from `history.parquet` and the
    manifest, when the reader folder is that best epoch's. Then only scoring is redone. None otherwise."""
    try:
        manifest = read_manifest(out_dir)
        if manifest is None or manifest["key"] != key or not (out_dir / HISTORY).is_file():
            return None
        meta = json.loads((out_dir / READER / READER_JSON).read_text(encoding="utf-8"))
        history = pl.read_parquet(out_dir / HISTORY).to_dicts()
    except (CacheError, OSError, ValueError, pl.exceptions.PolarsError):
        return None  # anything missing or damaged: trained again
    best_epoch = manifest.get("counts", {}).get("best_epoch")
    if not history or meta.get("epoch") != best_epoch:
        return None
    logger.info(
        "the reader's training is complete (best epoch %d of %d, in %s): nothing is trained again; "
        "only the scores are written again",
        best_epoch,
        history[-1]["epoch"],
        out_dir / READER,
    )
    return training.Trained(history, {"score": manifest.get("best_dev_accuracy"), "epoch": best_epoch})


def sequence_layout(config: RunConfig) -> Layout:
    """The reader's sequence layout from [rerank]: sequence and context budgets, top_k, form."""
    rerank = config.rerank
    return Layout(rerank.max_seq_tokens, rerank.max_context_tokens, rerank.top_k, rerank.form)


def check_positions(reader, layout: Layout) -> None:
    """E203 when max_seq_tokens is longer than the encoder's position table."""
    most = getattr(reader.encoder.config, "max_position_embeddings", None)
    # RoBERTa-style models (e5) reserve the first positions: padding_idx + 1 of them.
    usable = (
        most - (getattr(reader.encoder.config, "pad_token_id", 0) or 0) - 1
        if most and reader.encoder.config.model_type in ("xlm-roberta", "roberta")
        else most
    )
    if usable is not None and layout.max_seq_tokens > usable:
        raise ConfigError(
            "E203",
            where="[rerank]",
            field="max_seq_tokens",
            value=layout.max_seq_tokens,
            reason=f"the encoder reads at most {usable} positions; give {usable} or fewer",
        )


def read_examples(
    config: RunConfig, tokenizer, layout: Layout, device: torch.device
) -> tuple[pl.DataFrame, ReaderExamples]:
    """(triage's mentions, their reader examples against each one's top_k candidates)."""
    triage_dir = config.stage_dir("triage")
    mentions = triage_tables.read(
        triage_dir, triage_tables.MENTIONS, "mention_id", "context", "start", "end", "split", "lang", "gold_kb_id"
    )
    candidates = triage_tables.read(
        triage_dir, triage_tables.CANDIDATES, "mention_id", "rank", "kb_id", "score", "sources"
    )
    on_ranker = config.rerank.candidates == "ranker"
    ordered = reader_inputs.candidate_order(
        candidates, ranker_scores(config, candidates, device) if on_ranker else None
    )
    top = reader_inputs.top_candidates(ordered, layout.top_k)
    entities = collect_checked(
        triage_tables.scan(triage_dir, triage_tables.ENTITIES)
        .select("kb_id", "name", "type", "description")
        .filter(pl.col("kb_id").is_in(top["kb_id"].unique().implode())),
        triage_tables.path(triage_dir, triage_tables.ENTITIES),
    )
    return mentions, build_examples(tokenizer, mentions, top, entities, layout, config.rerank.triage_evidence)


def ranker_scores(config: RunConfig, candidates: pl.DataFrame, device: torch.device) -> pl.DataFrame:
    """The trained ranker's score of each of triage's `candidates` (mention_id, kb_id, score), as evaluate scores
    them: what orders a reader's candidates with `candidates = "ranker"`."""
    from pipeline.model.features import candidate_matrix, load_inputs, score_candidates
    from pipeline.model.model_file import load_model

    model, saved = load_model(config.stage_dir("train"), device)
    inputs, _, _ = load_inputs(
        config.stage_dir("triage"), config.stage_dir("encode"), saved["mention_types"], saved["entity_types"], 0, device
    )
    if "triage" in getattr(model, "features", ()):
        inputs.attach_triage(candidates)
    rows = inputs.mentions["row"].to_numpy()
    matrix = candidate_matrix(candidates, inputs, rows)
    scores = score_candidates(model, inputs, rows, matrix)
    row_index, slot = np.nonzero(matrix >= 0)
    return pl.DataFrame(
        {
            "mention_id": inputs.mentions["mention_id"].to_numpy()[row_index],
            "kb_id": inputs.entity_ids["kb_id"].to_numpy()[matrix[row_index, slot]],
            "score": scores[row_index, slot].astype(np.float64),
        }
    )


def fit(
    reader: Reader, tokenizer, data: training.TrainingSet, config: RunConfig, key: str, world: World
) -> training.Trained:
    """Train for rerank.epochs (resuming from the checkpoint of `key`), keeping the best epoch's reader on disk;
    what training came to (history, best {score, epoch}). Only rank 0 evaluates and writes."""
    rerank, out_dir = config.rerank, config.stage_dir(STAGE)
    layout = data.examples.layout
    batches = math.ceil(math.ceil(len(data.train_rows) / world.size) / rerank.batch_mentions)  # per rank, epoch
    state = training.new_training(
        reader,
        (rerank.learning_rate, rerank.head_learning_rate),
        rerank.epochs * -(-batches // rerank.grad_accumulation),
    )
    shape = reader_shape(reader, layout)
    checkpoint = training.load_checkpoint(out_dir / CHECKPOINT, key, shape)
    if checkpoint is not None:
        state.resume(checkpoint, out_dir / CHECKPOINT)
        if world.is_main:
            then = "the best epoch's reader only scores the mentions"
            say_resumed("the reader's training", out_dir / CHECKPOINT, checkpoint["epoch"], rerank.epochs, then)
    state.spread_over(world, rerank.seed)
    if len(data.dev_rows) == 0 and world.is_main:
        warn(logger, "W509")
    if rerank.triage_evidence and config.triage.crossfit_folds == 0 and world.is_main:
        warn(logger, "W510")
    plan = training.Schedule(
        rerank.batch_mentions,
        rerank.grad_accumulation,
        rerank.precision,
        rerank.seed,
        rerank.nil_hidden_share,
        rerank.shuffle_slots,
    )
    progress = progress_counter(
        rerank.epochs * batches, "rerank", "batches", initial=(state.start_epoch - 1) * batches, enabled=world.is_main
    )
    for epoch in range(state.start_epoch, rerank.epochs + 1):
        loss = training.train_epoch(state, data, epoch, plan, world, progress)
        record = {"epoch": epoch, "loss": loss, "dev_accuracy": None}
        if world.is_main:
            record["dev_accuracy"] = training.accuracy(reader, data.examples, data.dev_rows, rerank.precision)
            logger.info("rerank epoch %d: loss %.4f, dev micro-average %.4f", epoch, loss, record["dev_accuracy"])
            score = record["dev_accuracy"] if not math.isnan(record["dev_accuracy"]) else -loss
            if score > state.best["score"]:  # the reader folder first, then the checkpoint that records it
                state.best = {"score": score, "epoch": epoch}
                save_reader(reader, tokenizer, out_dir / READER, reader_meta(config, layout, epoch, record))
            state.history.append(record)
            save_torch(out_dir / CHECKPOINT, state.checkpoint(key, epoch, shape))
        distributed.barrier(world)
    progress.close()
    return training.Trained(state.history, state.best)


def reader_shape(reader, layout: Layout) -> dict:
    """What a checkpoint must match to be resumed: the encoder's architecture and the sequence layout."""
    encoder_config = reader.encoder.config
    return {
        "model_type": encoder_config.model_type,
        "hidden_size": int(encoder_config.hidden_size),
        "layers": int(encoder_config.num_hidden_layers),
        "vocab_size": int(encoder_config.vocab_size),
        "top_k": layout.top_k,
        "max_seq_tokens": layout.max_seq_tokens,
        "max_context_tokens": layout.max_context_tokens,
        "form": layout.form,
        "triage_evidence": reader.evidence_score is not None,
    }


def reader_meta(config: RunConfig, layout: Layout, epoch: int, record: dict) -> dict:
    """reader.json's content: the layout, the settings and where the reader came from."""
    return {
        "layout": dataclasses.asdict(layout),
        "candidates": config.rerank.candidates,
        "triage_evidence": config.rerank.triage_evidence,
        "precision": config.rerank.precision,
        "cast_weights": True,  # scored with the encoder's weights in the precision's dtype (`cast_encoder`)
        "settings": to_dict(config.rerank),
        "encoder": config.rerank.encoder or config.encoder.name,
        "epoch": epoch,
        "dev_accuracy": record["dev_accuracy"],
    }


def finish(
    stage_run: StageRun, data: training.TrainingSet, state: training.Trained, device: torch.device, world: World
) -> StageResult:
    """Score the dev and test mentions with the best epoch's reader, write the scores and history, then the manifest."""
    out_dir = stage_run.out_dir
    reader, _, _ = load_reader(out_dir / READER, device)
    scored = data.examples.subset(data.scored_rows, with_gold=False)
    write_parquet_atomic(score_mentions(reader, scored, device, stage_run.settings["precision"]), out_dir / SCORES)
    write_parquet_atomic(
        pl.DataFrame(state.history, schema={"epoch": pl.Int64, "loss": pl.Float64, "dev_accuracy": pl.Float64}),
        out_dir / HISTORY,
    )
    best_epoch = state.best["epoch"]
    best_accuracy = state.best["score"] if len(data.dev_rows) else None
    counts = {**data.counts, "scored_mentions": len(data.scored_rows), "best_epoch": best_epoch}
    return stage_run.finish(
        counts,
        [READER, SCORES, HISTORY],
        summary={"best_dev_accuracy": best_accuracy, "best_epoch": best_epoch},
        extra={
            "best_dev_accuracy": best_accuracy,
            "device": str(device),
            **({"world_size": world.size} if world.distributed else {}),
        },
    )
