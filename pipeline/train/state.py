"""What training carries from epoch to epoch, and how a checkpoint saves and restores it.

`TrainingState` holds the ranker, what trains it (the ranker itself, or the §7.1
name-matching objective around it), the optimizer, the batch generators, the weight
average, the history and the best epoch so far. A checkpoint of it lets a killed run resume
exactly where it was (tests/cli/test_crash_matrix.py); a checkpoint of another architecture is
refused (E505), never silently dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.core.checkpoints import read_checkpoint, refuse_other_shape
from pipeline.core.config import TrainConfig, to_dict
from pipeline.core.errors import CacheError
from pipeline.model.features import RankerInputs
from pipeline.model.ranker import NameMatching, Ranker, RankerShape

logger = logging.getLogger(__name__)


def ranker_shape(config: TrainConfig, inputs: RankerInputs) -> RankerShape:
    """The ranker's architecture: [train] layer sizes around the encoded vectors' and type vocabularies' sizes."""
    return RankerShape(
        features=config.features,
        vector_size=int(inputs.mention_name.shape[1]),
        mention_types=int(inputs.mention_type_onehot.shape[1]),
        entity_types=int(inputs.entity_type_onehot.shape[1]),
        name_hidden=config.name_hidden,
        context_hidden=config.context_hidden,
        type_hidden=config.type_hidden,
        final_hidden=config.final_hidden,
        dropout=config.dropout,
        triage_hidden=config.triage_hidden,
        nil_candidate=config.nil_candidate,
        pair_input=config.pair_input,
    )


def load_checkpoint(path: Path, key: str, shape: RankerShape) -> dict | None:
    """The checkpoint to resume from, or None when there is none or it is of other inputs or settings.

    A checkpoint of this run's key whose ranker architecture differs from `shape` (or whose
    weights do not fit it) cannot be resumed: E505, rather than silently starting over.
    """
    checkpoint = read_checkpoint(path, key)
    if checkpoint is None:
        return None
    saved = checkpoint.get("shape")
    if saved is not None:
        # Fields added to RankerShape since (nil_candidate, pair_input) read as their defaults, as load_model reads them.
        defaults = {f.name: f.default for f in dataclasses.fields(RankerShape) if f.default is not dataclasses.MISSING}
        saved = {**defaults, **saved}
    if saved is not None:
        refuse_other_shape(path, saved, dataclasses.asdict(shape), "E505")
    return checkpoint


def weight_average(model: Ranker, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of `model`'s weights (torch's AveragedModel), or None when `decay` is 0.

    After each `update_parameters(model)`, average = decay * average + (1 - decay) * model;
    the first update copies the model. `.module` is a Ranker holding the average.
    """
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


@dataclass
class TrainingState:
    """The ranker, its objective, optimizer, generators, weight average, history and best epoch.

    `model` is the ranker that trains; `objective` what the loss is computed with (the ranker,
    or NameMatching around it when §7.1 pairs are on); `kept` what is evaluated and saved
    (the weight average when on, else the ranker). `best` = {score, epoch, state}.
    """

    model: Ranker
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    pair_generator: torch.Generator | None
    average: torch.optim.swa_utils.AveragedModel | None
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": -math.inf, "epoch": 0, "state": None})
    start_epoch: int = 1

    @property
    def kept(self) -> torch.nn.Module:
        return self.average.module if self.average is not None else self.model

    def resume(self, checkpoint: dict, path: Path) -> None:
        """Restore everything from `checkpoint` (of this run's key and shape); E505 when the weights do not fit."""
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:  # missing, unexpected or mis-sized weights
            raise CacheError("E505", path=path, detail=str(exc).splitlines()[0]) from None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.history, self.best = checkpoint["history"], checkpoint["best"]
        if self.average is not None:
            self.average.load_state_dict(checkpoint["average"])
        if self.pair_generator is not None:
            self.objective.match.load_state_dict(checkpoint["name_match"])
            self.pair_generator.set_state(checkpoint["pair_generator"])
        self.start_epoch = checkpoint["epoch"] + 1
        logger.info("resuming training at epoch %d from %s", self.start_epoch, path)

    def checkpoint(self, key: str, epoch: int, shape: RankerShape, config: TrainConfig) -> dict:
        """The payload a checkpoint after `epoch` saves (see `resume`)."""
        extra = (
            {}
            if self.pair_generator is None
            else {"name_match": self.objective.match.state_dict(), "pair_generator": self.pair_generator.get_state()}
        )
        if self.average is not None:
            extra["average"] = self.average.state_dict()
        return {
            "key": key,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "best": self.best,
            "shape": dataclasses.asdict(shape),
            "config": to_dict(config),
            **extra,
        }

    def keep_if_best(self, epoch: int, score: float) -> None:
        """Remember `kept`'s weights (on the CPU) when `score` beats the best so far."""
        if score > self.best["score"]:
            self.best = {
                "score": score,
                "epoch": epoch,
                "state": {k: v.detach().cpu().clone() for k, v in self.kept.state_dict().items()},
            }


def new_state(config: TrainConfig, shape: RankerShape, device: torch.device, name_pairs: bool) -> TrainingState:
    """A freshly initialised ranker (seeded by `config.seed`) and everything that trains it."""
    torch.manual_seed(config.seed)
    model = Ranker(shape).to(device)
    # With name pairs the matching layer is made after the ranker, so the ranker starts from the
    # same weights as without.
    objective: torch.nn.Module = NameMatching(model).to(device) if name_pairs else model
    optimizer = torch.optim.Adam(objective.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    # Pairs draw from a generator of their own (seed + 1), so the mentions' batches stay as without pairs.
    pair_generator = torch.Generator().manual_seed(config.seed + 1) if name_pairs else None
    return TrainingState(
        model, objective, optimizer, generator, pair_generator, weight_average(model, config.weight_average)
    )
