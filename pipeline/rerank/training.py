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
from pipeline.model.reader_inputs import Layout, Specials

logger = logging.getLogger(__name__)

WARMUP_SHARE = 0.1  # of the optimizer steps, with the learning rate rising linearly (then falling to 0)


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


def epoch_plan(
    examples: ReaderExamples, rows: np.ndarray, seed: int, epoch: int, hidden_share: float, world: World
) -> tuple[np.ndarray, np.ndarray]:
    """(this rank's rows in this epoch's order, whether each one's gold is hidden), drawn from (seed, epoch).

    A linked mention's gold is hidden with probability `hidden_share` (its label becomes NIL).
    Under torchrun the order is padded by repetition to a multiple of the world size and each
    rank takes every size-th row, so every rank runs the same number of batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(rows)
    linked = np.array([examples.gold[row] != schema.NIL_ID for row in order], dtype=bool)
    hidden = linked & (rng.random(len(order)) < hidden_share)
    if world.distributed and len(order):
        padded = -(-len(order) // world.size) * world.size
        repeat = np.arange(padded) % len(order)
        order, hidden = order[repeat][world.rank :: world.size], hidden[repeat][world.rank :: world.size]
    return order, hidden


def labelled_batch(
    examples: ReaderExamples,
    rows: np.ndarray,
    hidden: np.ndarray,
    layout: Layout,
    marks: Specials,
    device: torch.device,
) -> tuple[list[reader_inputs.Reading], torch.Tensor]:
    """(the readings of `rows`, labels (B,)); a hidden gold is left out and labelled NIL (slot 0)."""
    readings, labels = [], []
    for row, hide in zip(rows, hidden):
        gold = examples.gold[row]
        item = examples.reading(int(row), layout, marks, hide=gold if hide else None)
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


def new_training(reader: Reader, learning_rate: float, total_steps: int) -> ReaderTraining:
    """AdamW over the trainable weights, with a linear warm-up over WARMUP_SHARE of `total_steps`, then linear decay."""
    optimizer = torch.optim.AdamW([p for p in reader.parameters() if p.requires_grad], lr=learning_rate)
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


@dataclass(frozen=True)
class Schedule:
    """How an epoch runs: mentions per batch, batches per optimizer step, autocast precision, seed, hidden share."""

    batch_mentions: int
    grad_accumulation: int
    precision: str
    seed: int
    hidden_share: float


def train_epoch(
    trained: torch.nn.Module,
    state: ReaderTraining,
    examples: ReaderExamples,
    rows: np.ndarray,
    epoch: int,
    plan: Schedule,
    layout: Layout,
    marks: Specials,
    world: World,
    progress,
) -> float:
    """One epoch over `rows` (this rank's share, `epoch_plan`); returns the mean training loss over all ranks.

    `trained` is the reader, or DistributedDataParallel around it under torchrun.
    """
    device = next(state.reader.parameters()).device
    dtype = autocast_dtype(plan.precision, device)
    order, hidden = epoch_plan(examples, rows, plan.seed, epoch, plan.hidden_share, world)
    trained.train()
    total, batches = 0.0, 0
    starts = range(0, len(order), plan.batch_mentions)
    for number, start in enumerate(starts, 1):
        inputs, labels = labelled_batch(
            examples,
            order[start : start + plan.batch_mentions],
            hidden[start : start + plan.batch_mentions],
            layout,
            marks,
            device,
        )
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = read(trained, inputs, layout.top_k + 1, marks, device)
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


def accuracy(
    reader: Reader, examples: ReaderExamples, rows: np.ndarray, layout: Layout, marks: Specials, precision: str
) -> float:
    """Micro-average of the reader's own decisions on `rows` (NaN without rows): a NIL mention is right
    when the NIL option wins (or it has no candidate), a linked one when its gold wins."""
    if len(rows) == 0:
        return float("nan")
    device = next(reader.parameters()).device
    subset = ReaderExamples(
        [examples.mention_ids[r] for r in rows],
        [examples.contexts[r] for r in rows],
        [examples.candidates[r] for r in rows],
        [examples.gold[r] for r in rows],
        examples.entity_tokens,
    )
    best = reader_predictions(score_mentions(reader, subset, layout, marks, device, precision))
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
