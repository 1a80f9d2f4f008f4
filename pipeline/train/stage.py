"""train: fit the ranker (§3.2) with the hinge loss (§3.3) on cached vectors.

Each step takes `batch_mentions` training mentions whose gold entity was encoded,
scores the gold and `negatives` sampled negatives (a share from the mention's own
candidates, the rest at random from the encoded entities), and minimises
max(0, margin - (gold - hardest negative)). Dev linking accuracy picks the best epoch
and stops early. Checkpoints make a killed run resume where it was; the checkpoint is deleted once
the manifest is written (a finished stage's outputs are what later stages read).

The paper's settings choose the training mentions (`training_rows`: Mono, Multi,
MultiDS, zero-shot); `baseline = "nn"` trains nothing and saves the nearest-neighbour
scorer instead, which `load_model` returns like a ranker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from pipeline.core import distributed, schema
from pipeline.core.checkpoints import discard_checkpoint, say_resumed
from pipeline.core.config import RunConfig, TrainConfig, to_dict
from pipeline.core.distributed import World
from pipeline.core.errors import InputError, warn
from pipeline.core.io import write_parquet_atomic
from pipeline.core.manifest import StageIdentity, StageResult, StageRun, upstream_key
from pipeline.core.progress import progress as progress_counter
from pipeline.core.threads import small_model_threads
from pipeline.formats import triage_tables
from pipeline.formats.vectors import VECTORS, name_pairs_key, vector_name_layer
from pipeline.model.model_file import MODEL, save_torch

if TYPE_CHECKING:  # torch and the ranker's modules are imported once there is training to do, not when up to date
    import torch

    from pipeline.model.features import RankerInputs
    from pipeline.train.collapse import Collapse

logger = logging.getLogger(__name__)

STAGE = "train"
STAGE_VERSION = 1
CHECKPOINT = "checkpoints/last.pt"
# Settings added after the first runs, with their defaults: left out of the stage key while
# at the default, so runs made before they existed stay up to date.
LATER_SETTINGS = {
    "downsample_to_language": "",
    "baseline": "none",
    "name_pairs": None,
    "name_pair_weight": 0.5,
    "name_pair_negatives": 20,
    "weight_average": 0.0,
    "nil_candidate": False,
    "pair_input": "concat",
}
# The §7.1 settings count only while name matching is on: a weight of 0 trains exactly what
# no pairs file does, so it keeps that run's key. The file enters the key by content (inputs).
NAME_MATCHING_SETTINGS = ("name_pairs", "name_pair_weight", "name_pair_negatives")


def select_rows(mentions: pl.DataFrame, split: str, languages: tuple[str, ...], with_nil: bool = False) -> np.ndarray:
    """Rows of `split`'s mentions (of `languages`, all when empty) whose gold is a KB id, or also NIL with `with_nil`."""
    chosen = mentions.filter(pl.col("split") == split)
    if languages:
        chosen = chosen.filter(pl.col("lang").is_in(list(languages)))
    wanted = pl.col("gold_kb_id").is_not_null() if with_nil else schema.linked_gold()  # a KB id, or also NIL
    return chosen.filter(wanted)["row"].to_numpy()


def training_rows(
    mentions: pl.DataFrame,
    gold: np.ndarray,
    languages: tuple[str, ...],
    downsample_to: str,
    seed: int,
    nil_gold: np.ndarray | None = None,
) -> np.ndarray:
    """Mention rows the ranker trains on, ascending: the paper's Mono, Multi, MultiDS and zero-shot.

    mentions: the mention table in row order (row, split, lang); gold: the entity row of
    every mention's gold (-1 for NIL or an unencoded entity, which cannot be trained on).
    Keeps training-split mentions with a gold row, in `languages` (all when empty). With
    `nil_gold` ((n_mentions,) bool, True where the gold is NIL; given when the ranker has a
    NIL option) the NIL-gold mentions train too. With `downsample_to` (MultiDS) keeps a
    random subset, seeded by `seed`, as large as that language's own such mentions; a set
    already that small is kept whole.
    """
    trainable = gold >= 0 if nil_gold is None else (gold >= 0) | nil_gold
    linkable = mentions.select("row", "split", "lang").filter(pl.Series(trainable), pl.col("split") == "train")
    chosen = linkable.filter(pl.col("lang").is_in(list(languages))) if languages else linkable
    rows = chosen["row"].to_numpy()
    if downsample_to:
        size = linkable.filter(pl.col("lang") == downsample_to).height
        if size < len(rows):
            rows = np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))
    return rows


def identity(config: RunConfig) -> StageIdentity:
    """What train's key hashes (`stage_identity`), as every stage gives it."""
    inputs, settings = stage_identity(config)
    return StageIdentity(STAGE, STAGE_VERSION, settings, inputs)


def stage_identity(config: RunConfig) -> tuple[dict[str, str], dict]:
    """(inputs, settings) of train's key: upstream keys (and the §7.1 pairs file), the settings that change the model."""
    triage_dir, encode_dir = config.stage_dir("triage"), config.stage_dir("encode")
    inputs_keys = {"triage": upstream_key(triage_dir, "triage"), "encode": upstream_key(encode_dir, "encode")}
    train_config = config.train
    if train_config.name_matching:
        if not train_config.name_pairs.is_file():
            raise InputError("E108", path=train_config.name_pairs)
        inputs_keys["name_pairs"] = name_pairs_key(inputs_keys["encode"], train_config.name_pairs)
    # Device and checkpoint frequency change speed and what a kill loses, not the model
    # (a resumed run equals an uninterrupted one: tests/cli/test_crash_matrix.py).
    settings = {
        k: v
        for k, v in to_dict(train_config).items()
        if k not in ("device", "checkpoint_every", "checkpoint_minutes")
        and LATER_SETTINGS.get(k, Ellipsis) != v
        and (k not in NAME_MATCHING_SETTINGS or (train_config.name_matching and k != "name_pairs"))
    }
    return inputs_keys, settings


@dataclass
class TrainingData:
    """The vectors and the mentions train fits (train_rows, gold rows) and picks epochs by (dev_*).

    Rows index `inputs.mentions`; gold arrays hold entity rows (-1: NIL or not encoded);
    dev_matrix is (n_dev, k) candidate entity rows; dev_nil (n_dev,) True for NIL golds, only
    with the NIL option (train.nil_candidate), else None. saved_rows go into model.pt.
    """

    inputs: RankerInputs
    candidates: pl.DataFrame
    train_rows: np.ndarray
    train_gold: np.ndarray
    dev_rows: np.ndarray
    dev_matrix: np.ndarray
    dev_gold: np.ndarray
    saved_rows: dict
    counts: dict
    by_language: dict
    dev_nil: np.ndarray | None = None


def training_data(triage_dir: Path, encode_dir: Path, train_config: TrainConfig, device: torch.device) -> TrainingData:
    """Read triage's tables and encode's vectors, and choose the training and dev mentions (`training_rows`)."""
    from pipeline.model.features import candidate_matrix, gold_rows, load_inputs

    inputs, mention_types, entity_types = load_inputs(
        triage_dir, encode_dir, None, None, train_config.min_type_count, device
    )
    candidates = triage_tables.read(
        triage_dir, triage_tables.CANDIDATES, "mention_id", "rank", "kb_id", "score", "sources"
    )
    if "triage" in train_config.features:
        inputs.attach_triage(candidates)
    all_gold = gold_rows(inputs, np.arange(inputs.mentions.height))  # by mention row (inputs.mentions is in row order)
    # With the NIL option, NIL-gold mentions train and count on dev; their gold row stays -1.
    nil_gold = (inputs.mentions["gold_kb_id"] == schema.NIL_ID).fill_null(False).to_numpy()
    with_nil = train_config.nil_candidate
    train_rows = training_rows(
        inputs.mentions,
        all_gold,
        train_config.train_languages,
        train_config.downsample_to_language,
        train_config.seed,
        nil_gold if with_nil else None,
    )
    train_gold = all_gold[train_rows]
    dev_rows = select_rows(inputs.mentions, "dev", train_config.train_languages, with_nil)
    dev_matrix = candidate_matrix(candidates, inputs, dev_rows)
    dev_gold = all_gold[dev_rows]
    dev_nil = nil_gold[dev_rows] if with_nil else None
    saved_rows = {
        "mention_types": mention_types,
        "entity_types": entity_types,
        "train_mention_ids": inputs.mentions["mention_id"].to_numpy()[train_rows].tolist(),
        # model.json's encoder settings can be edited by hand; this is what they are checked against.
        "name_layer": vector_name_layer(encode_dir / VECTORS),
    }
    counts = {"train_mentions": len(train_rows), "dev_mentions": len(dev_rows)}
    if with_nil:
        counts["train_nil_mentions"] = int(nil_gold[train_rows].sum())
    by_language = dict(inputs.mentions[train_rows].group_by("lang").len().sort("lang").iter_rows())
    return TrainingData(
        inputs,
        candidates,
        train_rows,
        train_gold,
        dev_rows,
        dev_matrix,
        dev_gold,
        saved_rows,
        counts,
        by_language,
        dev_nil,
    )


def run(config: RunConfig, force: bool = False) -> StageResult:
    """Train the ranker; under torchrun, as one of WORLD_SIZE data-parallel processes (`pipeline.core.distributed`).

    On one CPU thread whatever the process's count (`threads.small_model_threads`): the ranker's
    layers are too small to gain from more, and its weights then do not depend on the count.
    """
    world = distributed.world_from_environment()
    with distributed.process_group(world, config.train.device), contextlib.ExitStack() as scope:
        return _train(config, force, world, scope)


def _nearest_neighbour(
    stage_run: StageRun, data: TrainingData, train_config: TrainConfig, device, world: World
) -> StageResult:
    """The nearest-neighbour baseline: nothing to fit (the cosine scores are the model); dev accuracy is
    reported as for the ranker."""
    from pipeline.model.ranker import NearestNeighbour
    from pipeline.train.batches import linking_accuracy

    out_dir, key, counts = stage_run.out_dir, stage_run.key, data.counts
    result = StageResult(
        STAGE,
        out_dir,
        skipped=False,
        seconds=time.time() - stage_run.started,
        counts={**counts, "epochs": 0, "best_epoch": 0},
    )
    if world.is_main:
        dev_accuracy = linking_accuracy(NearestNeighbour(), data.inputs, data.dev_rows, data.dev_matrix, data.dev_gold)
        save_torch(
            out_dir / MODEL,
            {
                "key": key,
                "baseline": "nn",
                "model": {},
                "best_epoch": 0,
                "config": to_dict(train_config),
                **data.saved_rows,
            },
        )
        outcome = _Outcome([], {**counts, "epochs": 0, "best_epoch": 0}, dev_accuracy, 0)
        result = _finish(stage_run, outcome, data.by_language, device, world)
    distributed.barrier(world)
    return result


@dataclass
class _Loop:
    """What the epoch loop works with: settings, the process's place, the training state and data."""

    train_config: TrainConfig
    world: World
    device: object  # torch.device
    state: object  # train.state.TrainingState
    trained: object  # the objective, wrapped in DDP when data-parallel
    data: TrainingData
    mentions: object  # train.batches.TrainingMentions: the training rows, their candidates and gold
    name_pairs: object
    checkpoint_path: Path
    key: str
    shape: object


def _run_epochs(loop: _Loop) -> int:
    """Train from the state's start epoch until the last or an early stop, evaluating on dev every
    `eval_every` epochs and checkpointing when due (rank 0 alone); returns the last epoch trained."""
    from pipeline.train.batches import StepContext, train_epoch

    train_config, world, state = loop.train_config, loop.world, loop.state
    last_epoch, stale_epochs = _epochs_left(state, train_config)
    if state.start_epoch > 1 and world.is_main:  # resumed from a checkpoint
        then = "only the best epoch's model.pt and the manifest are written"
        say_resumed("training", loop.checkpoint_path, state.start_epoch - 1, last_epoch, then)
    progress = progress_counter(
        train_config.epochs, "train", "epochs", initial=state.start_epoch - 1, enabled=world.is_main
    )
    step = StepContext(train_config, state.generator, loop.device, world)
    epoch = state.start_epoch - 1
    last_saved = _clock()
    for epoch in range(state.start_epoch, last_epoch + 1):
        epoch_loss, pair_loss = train_epoch(
            loop.trained, state.optimizer, loop.mentions, step, loop.name_pairs, state.pair_generator
        )
        if state.average is not None:
            state.average.update_parameters(state.model)
        record = {"epoch": epoch, "loss": epoch_loss, "dev_accuracy": None}
        if loop.name_pairs is not None:
            record["name_pair_loss"] = pair_loss
        # Only rank 0 evaluates, keeps the best state and writes checkpoints; its stop decision is broadcast.
        if world.is_main and (epoch % train_config.eval_every == 0 or epoch == train_config.epochs):
            stale_epochs = _evaluate(loop, record)
            progress.set_postfix(loss=f"{record['loss']:.4f}", dev=f"{record['dev_accuracy']:.3f}")
        state.history.append(record)
        progress.update(1)
        stop = train_config.patience > 0 and stale_epochs >= train_config.patience
        if world.is_main and (stop or checkpoint_due(epoch, _clock() - last_saved, train_config)):
            save_torch(loop.checkpoint_path, state.checkpoint(loop.key, epoch, loop.shape, train_config))
            last_saved = _clock()
        if world.distributed:
            stop = distributed.broadcast(stop, world)
        if stop:
            if world.is_main:
                logger.info("early stop at epoch %d: dev accuracy has not improved for %d epochs", epoch, stale_epochs)
            break
    progress.close()
    return epoch


def _epochs_left(state, train_config: TrainConfig) -> tuple[int, int]:
    """(the last epoch to train, epochs since the best) of a state that may be resumed: a run killed
    after its early-stop checkpoint has finished training, and trains no further."""
    # As the loop counts it: epochs from the best to the last evaluated one (not to the last
    # trained one: a checkpoint between evaluations would stop a resumed run too early).
    evaluated = [record["epoch"] for record in state.history if record["dev_accuracy"] is not None]
    stale_epochs = evaluated[-1] - state.best["epoch"] if evaluated else 0
    stopped = train_config.patience > 0 and stale_epochs >= train_config.patience
    return (state.start_epoch - 1 if stopped else train_config.epochs), stale_epochs


def _evaluate(loop: _Loop, record: dict) -> int:
    """Dev accuracy of the kept weights after `record`'s epoch, into `record`; keeps the state if it is the
    best so far (without dev mentions: the epoch of lowest training loss, W501). Epochs since the best."""
    from pipeline.train.batches import linking_accuracy

    state, data, epoch = loop.state, loop.data, record["epoch"]
    record["dev_accuracy"] = linking_accuracy(
        state.kept, data.inputs, data.dev_rows, data.dev_matrix, data.dev_gold, data.dev_nil
    )
    state.keep_if_best(epoch, record["dev_accuracy"] if not math.isnan(record["dev_accuracy"]) else -record["loss"])
    return epoch - state.best["epoch"]


def _data_parallel(state, train_config: TrainConfig, device, world: World):
    """The objective to train: the state's own, or wrapped in DistributedDataParallel under torchrun."""
    if not world.distributed:
        return state.objective
    import torch
    from torch.nn.parallel import DistributedDataParallel

    # DDP starts every rank from rank 0's weights; the batch generator is seeded alike on
    # every rank (the ranks must draw the same batches), but dropout should not repeat the
    # same masks on every rank's other mentions: ranks other than 0 re-seed it.
    trained = DistributedDataParallel(state.objective, device_ids=[device.index] if device.type == "cuda" else None)
    if not world.is_main:
        torch.manual_seed(train_config.seed + 100_003 * world.rank + state.start_epoch)
    return trained


def _save_best(stage_run: StageRun, loop: _Loop, epoch: int) -> StageResult:
    """model.pt from the best epoch's weights, the collapse check (W503) and the manifest; rank 0 writes,
    every rank returns the result once they are in place."""
    from pipeline.train.collapse import check_below_triage, check_collapse

    state, data, train_config, world = loop.state, loop.data, loop.train_config, loop.world
    counts = {**data.counts, "epochs": epoch, "best_epoch": state.best["epoch"]}
    result = StageResult(
        STAGE, stage_run.out_dir, skipped=False, seconds=time.time() - stage_run.started, counts=counts
    )
    if world.is_main:
        final_state = state.best["state"] if state.best["state"] is not None else state.kept.state_dict()
        save_torch(
            stage_run.out_dir / MODEL,
            {
                "key": loop.key,
                "model": final_state,
                "shape": dataclasses.asdict(loop.shape),
                "best_epoch": state.best["epoch"],
                "config": to_dict(train_config),
                **data.saved_rows,
            },
        )
        best_score = state.best["score"] if len(data.dev_rows) else None
        state.kept.load_state_dict(final_state)  # what model.pt holds is what is checked
        collapse = check_collapse(
            state.kept,
            data.inputs,
            data.dev_rows,
            data.dev_matrix,
            [r["loss"] for r in state.history],
            train_config.margin,
            best_score,
        )
        if collapse is None:  # a collapsed ranker's accuracy is triage's own (W503 said so)
            check_below_triage(best_score, data.dev_matrix, data.dev_gold)
        outcome = _Outcome(state.history, counts, best_score, state.best["epoch"], collapse)
        result = _finish(stage_run, outcome, data.by_language, loop.device, world)
        discard_checkpoint(loop.checkpoint_path)  # only now that the manifest is written
    distributed.barrier(world)  # the other ranks leave once rank 0's model and manifest are in place
    return result


def _train(config: RunConfig, force: bool, world: World, scope: contextlib.ExitStack) -> StageResult:
    """The stage's work; `scope` holds what lasts until the stage returns (one torch thread, once it trains)."""
    train_config, triage_dir = config.train, config.stage_dir("triage")
    inputs_keys, settings = stage_identity(config)
    stage_run = StageRun(config.stage_dir(STAGE), STAGE, STAGE_VERSION, settings, inputs_keys, force)
    # Rank 0 decides and does the file work; the other ranks follow its decision, so they
    # cannot disagree while rank 0 is removing the manifest.
    if distributed.broadcast(stage_run.up_to_date if world.is_main else None, world):
        if world.is_main:
            discard_checkpoint(stage_run.out_dir / CHECKPOINT)  # left by a run killed after its manifest
        return stage_run.skipped()
    # Only now: an up-to-date run needs none of the ranker's modules.
    from pipeline.train.state import load_checkpoint, new_state, ranker_shape

    scope.enter_context(small_model_threads())
    device = distributed.training_device(train_config.device, world)
    # Read and check every input before the old outputs are touched: a refused run leaves them as they were.
    data = training_data(triage_dir, config.stage_dir("encode"), train_config, device)
    if train_config.baseline == "nn":
        _begin(stage_run, force, world)
        return _nearest_neighbour(stage_run, data, train_config, device, world)
    mentions = _training_mentions(data, triage_dir)
    name_pairs = _name_pairs(config, inputs_keys, data, device)
    checkpoint_path = _begin(stage_run, force, world)
    shape = ranker_shape(train_config, data.inputs)
    state = new_state(train_config, shape, device, name_pairs is not None)
    checkpoint = load_checkpoint(checkpoint_path, stage_run.key, shape)
    if checkpoint is not None:
        state.resume(checkpoint, checkpoint_path)
    trained = _data_parallel(state, train_config, device, world)
    if len(data.dev_rows) == 0 and world.is_main:
        warn(logger, "W501")
    loop = _Loop(
        train_config, world, device, state, trained, data, mentions, name_pairs, checkpoint_path, stage_run.key, shape
    )
    return _save_best(stage_run, loop, _run_epochs(loop))


def _begin(stage_run: StageRun, force: bool, world: World) -> Path:
    """Rank 0 removes the old outputs (the manifest first) and, with `force`, the checkpoint, while the other
    ranks wait; the checkpoint's path."""
    checkpoint_path = stage_run.out_dir / CHECKPOINT
    if world.is_main:
        stage_run.begin(checkpoint_path.parent)
        if force:
            checkpoint_path.unlink(missing_ok=True)
    distributed.barrier(world)  # a forced run's old checkpoint is gone before any rank looks for one
    return checkpoint_path


def _training_mentions(data: TrainingData, triage_dir: Path):
    """The training mentions as the batches index them (`batches.TrainingMentions`); E112 when there are none."""
    import torch

    from pipeline.model.features import candidate_matrix
    from pipeline.train.batches import TrainingMentions

    if len(data.train_rows) == 0:
        raise InputError(
            "E112",
            path=triage_tables.path(triage_dir, triage_tables.MENTIONS),
            line="-",
            detail="no training mention (of train_languages, if set) links to an encoded KB entity; "
            "check the split, lang and gold_kb_id fields",
        )
    train_matrix = candidate_matrix(data.candidates, data.inputs, data.train_rows)
    return TrainingMentions(
        data.inputs, data.train_rows, torch.from_numpy(train_matrix), torch.from_numpy(data.train_gold)
    )


def _name_pairs(config: RunConfig, inputs_keys: dict[str, str], data: TrainingData, device):
    """The §7.1 name pairs with their vectors (`batches.NamePairs`, counted in `data.counts`); None when
    name matching is off."""
    from pipeline.train.batches import load_name_pairs

    if not config.train.name_matching:
        return None
    vector_size = int(data.inputs.mention_name.shape[1])
    name_pairs = load_name_pairs(
        config.train.name_pairs, config.stage_dir("encode"), inputs_keys["name_pairs"], vector_size, device
    )
    data.counts["name_pairs"] = len(name_pairs)
    return name_pairs


# The clock of time-based checkpoints (a test advances it).
_clock = time.monotonic


def checkpoint_due(epoch: int, seconds_since_checkpoint: float, train_config: TrainConfig) -> bool:
    """Whether to checkpoint after `epoch`: every `checkpoint_every` epochs, at the last epoch, and
    once `checkpoint_minutes` (when > 0) have passed since the last checkpoint or the start, so
    that a run with a large checkpoint_every leaves its first checkpoint within minutes."""
    minutes = train_config.checkpoint_minutes
    return (
        epoch % train_config.checkpoint_every == 0
        or epoch == train_config.epochs
        or (minutes > 0 and seconds_since_checkpoint >= 60 * minutes)
    )


@dataclass(frozen=True)
class _Outcome:
    """What training came to: the epochs' history, the stage's counts, the best dev accuracy (None or NaN
    without dev mentions) and its epoch, and the collapse check's finding when ties decided it (W503)."""

    history: list[dict]
    counts: dict
    best_score: float | None
    best_epoch: int
    collapse: Collapse | None = None


def _finish(
    stage_run: StageRun, outcome: _Outcome, by_language: dict, device: torch.device, world: World = World()
) -> StageResult:
    """Write history.parquet and the manifest (last), once model.pt is in place.

    With a collapse (ties decided the best score) the best score is not the model's: best_dev_accuracy
    is null and the value is kept as dev_accuracy_by_ties, beside the cause.
    """
    best_score, history = outcome.best_score, outcome.history
    if best_score is not None and math.isnan(best_score):
        best_score = None
    by_ties = {}
    if outcome.collapse is not None:
        by_ties = {"dev_accuracy_by_ties": best_score, "ranker_collapse": outcome.collapse.cause}
        best_score = None
    columns = {"epoch": pl.Int64, "loss": pl.Float64, "dev_accuracy": pl.Float64}
    if history and "name_pair_loss" in history[0]:
        columns["name_pair_loss"] = pl.Float64
    write_parquet_atomic(pl.DataFrame(history, schema=columns), stage_run.out_dir / "history.parquet")
    return stage_run.finish(
        outcome.counts,
        [MODEL, "history.parquet"],
        summary={"best_dev_accuracy": best_score, "best_epoch": outcome.best_epoch, **by_ties},
        extra={
            "best_dev_accuracy": best_score,
            **by_ties,
            "device": str(device),
            "train_mentions_by_language": by_language,
            **({"world_size": world.size} if world.distributed else {}),
        },
    )
