"""Fine-tuning the reader: which mentions train, one epoch, dev accuracy, and the checkpoint that resumes it.

Every epoch draws its own order and its own hidden golds from a generator seeded by
(seed, epoch), so a run resumed after epoch e trains epoch e + 1 exactly as an
uninterrupted one; the checkpoint holds the weights, optimizer, learning-rate schedule,
torch's RNG (dropout), the history and the best epoch. A checkpoint of the same key but
another architecture is refused (E506), never silently dropped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.core import distributed, schema
from pipeline.core.checkpoints import read_checkpoint, refuse_other_shape
from pipeline.core.distributed import World
from pipeline.core.errors import CacheError
from pipeline.model import reader_inputs
from pipeline.model.reader import Reader, ReaderExamples, autocast_dtype, read, reader_predictions, score_mentions

logger = logging.getLogger(__name__)

SCORED_SPLITS = ("dev", "test")  # the splits the best epoch's reader scores (reader_scores.parquet)
WARMUP_SHARE = 0.1  # of the optimizer steps, with the learning rate rising linearly (then falling to 0)


@dataclass(frozen=True)
class TrainingSet:
    """Every mention's reader examples and what each row is for (indices into `examples`).

    train_rows: training mentions the reader can learn (NIL, or their gold among their
    candidates); dev_rows: dev mentions with gold, whose micro-average picks the best epoch;
    scored_rows: dev and test mentions, scored by the best epoch's reader;
    gold_not_in_candidates: linked training mentions left out because triage or the
    ranker's top_k missed their gold.
    """

    examples: ReaderExamples
    train_rows: np.ndarray
    dev_rows: np.ndarray
    scored_rows: np.ndarray
    gold_not_in_candidates: int = 0

    @classmethod
    def of(cls, examples: ReaderExamples, split: np.ndarray, has_gold: np.ndarray) -> TrainingSet:
        """The rows of `examples` by each mention's `split` and whether it has a gold id (both (N,) arrays)."""
        train_rows, missed = trainable_rows(examples, np.nonzero((split == "train") & has_gold)[0])
        return cls(
            examples,
            train_rows,
            np.nonzero((split == "dev") & has_gold)[0],
            np.nonzero(np.isin(split, SCORED_SPLITS))[0],
            missed,
        )

    @property
    def counts(self) -> dict[str, int]:
        """The manifest's counts of what trained and what picked the epoch."""
        return {
            "train_mentions": len(self.train_rows),
            "train_gold_not_in_candidates": self.gold_not_in_candidates,
            "dev_mentions": len(self.dev_rows),
        }


def trainable_rows(examples: ReaderExamples, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """(rows whose gold the reader can learn: NIL, or a KB id among its candidates; how many linked ones were
    left out because triage or the ranker's top_k missed their gold)."""
    keep = [
        row for row in rows if examples.gold[row] == schema.NIL_ID or examples.gold[row] in examples.candidates[row]
    ]
    missed = sum(1 for row in rows if examples.gold[row] not in (None, schema.NIL_ID)) - sum(
        1 for row in keep if examples.gold[row] != schema.NIL_ID
    )
    return np.asarray(keep, dtype=np.int64), missed


@dataclass(frozen=True)
class Schedule:
    """How an epoch runs: mentions per batch, batches per optimizer step, autocast precision, seed, hidden share."""

    batch_mentions: int
    grad_accumulation: int
    precision: str
    seed: int
    hidden_share: float
    shuffle_slots: bool = True


def epoch_plan(
    examples: ReaderExamples, rows: np.ndarray, epoch: int, plan: Schedule, world: World
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(this rank's rows in this epoch's order, whether each one's gold is hidden, each one's slot-shuffle
    seed or None when `plan.shuffle_slots` is off), drawn from (plan.seed, epoch).

    A linked mention's gold is hidden with probability `plan.hidden_share` (its label becomes NIL).
    Under torchrun the order is padded by repetition to a multiple of the world size and each
    rank takes every size-th row, so every rank runs the same number of batches.
    """
    rng = np.random.default_rng([plan.seed, epoch])
    order = rng.permutation(rows)
    linked = np.array([examples.gold[row] != schema.NIL_ID for row in order], dtype=bool)
    hidden = linked & (rng.random(len(order)) < plan.hidden_share)
    # Drawn after the order and the hidden golds, so those stay what they were without shuffling.
    shuffles = rng.integers(0, 2**63 - 1, size=len(order)) if plan.shuffle_slots else None
    if world.distributed and len(order):
        padded = -(-len(order) // world.size) * world.size
        take = (np.arange(padded) % len(order))[world.rank :: world.size]
        order, hidden = order[take], hidden[take]
        shuffles = shuffles[take] if shuffles is not None else None
    return order, hidden, shuffles


def labelled_batch(
    examples: ReaderExamples, rows: np.ndarray, hidden: np.ndarray, shuffles: np.ndarray | None, device: torch.device
) -> tuple[list[reader_inputs.Reading], torch.Tensor]:
    """(the readings of `rows`, labels (B,)); a hidden gold is left out and labelled NIL (slot 0); with
    `shuffles` (one seed per row) each row's candidates take their slots in that seed's random order."""
    readings, labels = [], []
    for i, (row, hide) in enumerate(zip(rows, hidden)):
        gold = examples.gold[row]
        shuffle = None if shuffles is None else int(shuffles[i])
        item = examples.reading(int(row), hide=gold if hide else None, shuffle=shuffle)
        readings.append(item)
        labels.append(item.kept.index(gold) + 1 if gold in item.kept else reader_inputs.NIL_SLOT)
    return readings, torch.tensor(labels, dtype=torch.long, device=device)


@dataclass
class ReaderTraining:
    """The reader, what trains it and the record of epochs: `best` = {score, epoch} (weights are on disk)."""

    reader: Reader
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": -math.inf, "epoch": 0})
    start_epoch: int = 1
    # DistributedDataParallel around `reader` under torchrun (`spread_over`); None in one process.
    parallel: torch.nn.Module | None = None

    @property
    def module(self) -> torch.nn.Module:
        """What the training steps run: DDP around the reader under torchrun, else the reader."""
        return self.parallel if self.parallel is not None else self.reader

    def spread_over(self, world: World, seed: int) -> None:
        """Under torchrun, train through DistributedDataParallel (gradients averaged over the ranks), each rank
        seeded apart from `seed` so its dropout draws masks of its own; nothing in one process."""
        if not world.distributed:
            return
        from torch.nn.parallel import DistributedDataParallel

        device = next(self.reader.parameters()).device
        self.parallel = DistributedDataParallel(
            self.reader, device_ids=[device.index] if device.type == "cuda" else None
        )
        torch.manual_seed(seed + 100_003 * world.rank + self.start_epoch)

    def checkpoint(self, key: str, epoch: int, shape: dict) -> dict:
        """The payload of a checkpoint after `epoch` (see `resume`)."""
        return {
            "key": key,
            "epoch": epoch,
            "shape": shape,
            "model": self.reader.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "best": self.best,
        }

    def resume(self, checkpoint: dict, path: Path) -> None:
        """Restore everything from a checkpoint of this key and shape; E506 when the weights do not fit."""
        try:
            self.reader.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:
            raise CacheError("E506", path=path, detail=str(exc).splitlines()[0]) from None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.history, self.best = checkpoint["history"], checkpoint["best"]
        self.start_epoch = checkpoint["epoch"] + 1
        logger.info("resuming the reader's training at epoch %d from %s", self.start_epoch, path)


def new_training(reader: Reader, rates: tuple[float, float], total_steps: int) -> ReaderTraining:
    """AdamW over the trainable weights, the encoder's at `rates[0]` and the head's (`Reader.head`) at
    `rates[1]`, with a linear warm-up over WARMUP_SHARE of `total_steps`, then linear decay."""
    head = {id(p) for p in reader.head.parameters()}
    encoder = [p for p in reader.parameters() if p.requires_grad and id(p) not in head]
    groups = [{"params": encoder, "lr": rates[0]}, {"params": list(reader.head.parameters()), "lr": rates[1]}]
    optimizer = torch.optim.AdamW([group for group in groups if group["params"]])
    warmup = max(int(total_steps * WARMUP_SHARE), 1)

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (total_steps - step) / max(total_steps - warmup, 1))

    return ReaderTraining(reader, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor))


def load_checkpoint(path: Path, key: str, shape: dict) -> dict | None:
    """The checkpoint to resume from: None when there is none or it is of other inputs or settings;
    E402 when it cannot be read; E506 when it is of this key but another architecture."""
    checkpoint = read_checkpoint(path, key)
    if checkpoint is None:
        return None
    refuse_other_shape(path, checkpoint.get("shape") or {}, shape, "E506")
    return checkpoint


def train_epoch(state: ReaderTraining, data: TrainingSet, epoch: int, plan: Schedule, world: World, progress) -> float:
    """One epoch over this rank's share of `data.train_rows` (`epoch_plan`) through `state.module`;
    returns the mean training loss over all ranks. `progress` counts batches (`core.progress`)."""
    device = next(state.reader.parameters()).device
    dtype = autocast_dtype(plan.precision, device)
    examples, width = data.examples, data.examples.layout.top_k + 1
    order, hidden, shuffles = epoch_plan(examples, data.train_rows, epoch, plan, world)
    state.module.train()
    total, batches = 0.0, 0
    starts = range(0, len(order), plan.batch_mentions)
    for number, start in enumerate(starts, 1):
        part = slice(start, start + plan.batch_mentions)
        slot_seeds = None if shuffles is None else shuffles[part]
        inputs, labels = labelled_batch(examples, order[part], hidden[part], slot_seeds, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = read(state.module, inputs, width, examples.marks, device)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        (loss / plan.grad_accumulation).backward()
        if number % plan.grad_accumulation == 0 or number == len(starts):
            torch.nn.utils.clip_grad_norm_(state.reader.parameters(), 1.0)
            state.optimizer.step()
            state.schedule.step()
            state.optimizer.zero_grad(set_to_none=True)
        total, batches = total + float(loss.detach()), batches + 1
        progress.update(1)
        progress.set_postfix(epoch=epoch, loss=f"{total / batches:.4f}")
    summed = distributed.sum_over_ranks(total, world, device)
    count = distributed.sum_over_ranks(float(batches), world, device)
    return summed / max(count, 1.0)


def accuracy(reader: Reader, examples: ReaderExamples, rows: np.ndarray, precision: str) -> float:
    """Micro-average of the reader's own decisions on `rows` (NaN without rows): a NIL mention is right
    when the NIL option wins (or it has no candidate), a linked one when its gold wins."""
    if len(rows) == 0:
        return float("nan")
    device = next(reader.parameters()).device
    subset = examples.subset(rows)
    best = reader_predictions(score_mentions(reader, subset, device, precision))
    said = (
        pl.when(pl.col("reader_nil_score") > pl.col("reader_score"))
        .then(pl.lit(schema.NIL_ID))
        .otherwise("reader_kb_id")
    )
    decided = (
        pl.DataFrame({"mention_id": subset.mention_ids, "gold": subset.gold})
        .join(best.select("mention_id", said.alias("decision")), on="mention_id", how="left")
        .with_columns(pl.col("decision").fill_null(schema.NIL_ID))
    )  # no candidate: NIL
    return float((decided["decision"] == decided["gold"]).mean())
