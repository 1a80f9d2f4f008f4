"""A ranker that learned nothing, found at the end of training, and said so (W503, W504).

A ranker can collapse: every candidate gets one score (e.g. −0.0628 for all) and the hinge
loss max(0, margin − (gold − hardest negative)) sits at the margin, since gold and negatives
always score alike. Dev linking accuracy still looks fine then: ties keep triage's order
(`pipeline.model.ties`), so the accuracy measured is triage's, not the model's. Train checks
the kept model's dev scores and the loss history; when ties decided the dev accuracy it
warns with the cause and the fix, and `best_dev_accuracy` is null (the value is kept as
`dev_accuracy_by_ties` in the manifest).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.core.errors import warn
from pipeline.model.features import RankerInputs, score_candidates
from pipeline.model.ties import TIED_SHARE_WARN, score_matrix_ties, tie_advice

logger = logging.getLogger(__name__)

# The loss counts as stuck at the margin when each of the last STUCK_EPOCHS epochs' mean loss lies
# within LOSS_AT_MARGIN (relative) of it: a ranker that moves at all moves it further than that.
STUCK_EPOCHS = 3
LOSS_AT_MARGIN = 1e-3
# Collapsed when at least this share of the dev mentions with a runner-up get one score for all
# their candidates (the demo with features name,context,type: 56 of 57, every unit of the last
# hidden layer dead, every score -0.1838).
COLLAPSED_SHARE = 0.9

# A ranker whose best dev accuracy trails triage's first candidate by more than this learned too little to
# be worth its scores (a replay: 1 epoch gave 0.083 where triage's first candidate was right for 0.8).
BELOW_TRIAGE_MARGIN = 0.10

COLLAPSE_FIX = (
    "lower train.learning_rate (a step too large can leave every ReLU unit of a layer dead, "
    "which no later step revives), keep the triage feature in train.features when training "
    "mentions are few, and check that encode's vectors differ between mentions and entities; "
    "then re-run train with --force"
)


@dataclass(frozen=True)
class Collapse:
    """Why ties decided the dev accuracy: `cause` (W503's words), `ties` (`score_matrix_ties` of dev)."""

    cause: str
    fix: str
    ties: dict


def loss_stuck_at_margin(losses: list[float], margin: float) -> bool:
    """Whether each of the last `STUCK_EPOCHS` mean training losses equals `margin` (within `LOSS_AT_MARGIN`)."""
    last = [loss for loss in losses if loss is not None and not math.isnan(loss)][-STUCK_EPOCHS:]
    return len(last) == STUCK_EPOCHS and all(abs(loss - margin) <= LOSS_AT_MARGIN * margin for loss in last)


def diagnose(ties: dict | None, losses: list[float], margin: float) -> Collapse | None:
    """The collapse, if any, from dev ties (`score_matrix_ties`, None without dev mentions) and the loss history.

    Collapsed: at least `COLLAPSED_SHARE` of the dev mentions with a runner-up get one score for
    all their candidates, or the loss stuck at the margin. Not collapsed but tie-decided: more than `TIED_SHARE_WARN`
    of those mentions tie at the top (saturated or duplicate candidates; `tie_advice`).
    """
    stuck = loss_stuck_at_margin(losses, margin)
    constant = ties is not None and ties["mentions"] > 0 and ties["constant"] >= COLLAPSED_SHARE * ties["mentions"]
    parts = []
    if constant:
        parts.append(
            f"it gives all candidates one score for {ties['constant']} of {ties['mentions']} dev mention(s) "
            f"with a runner-up (e.g. {ties['constant_score']:.4f})"
        )
    if stuck:
        parts.append(
            f"the training loss stayed at the margin ({margin:g}) for the last {STUCK_EPOCHS} epochs "
            "(train/history.parquet), so no step told gold from negatives"
        )
    if parts:
        return Collapse("; ".join(parts), COLLAPSE_FIX, ties or {})
    if ties is not None and ties["share"] > TIED_SHARE_WARN:
        return Collapse(
            f"its best two candidates tie for {ties['tied']} of {ties['mentions']} dev mention(s) "
            f"with a runner-up ({ties['share']:.0%})",
            tie_advice(ties),
            ties,
        )
    return None


def check_collapse(
    model: torch.nn.Module,
    inputs: RankerInputs,
    dev_rows: np.ndarray,
    dev_matrix: np.ndarray,
    losses: list[float],
    margin: float,
    dev_accuracy: float | None,
) -> Collapse | None:
    """Score dev with the kept `model` and `diagnose` it; warn W503 when ties decided `dev_accuracy`.

    dev_rows (n,) mention rows, dev_matrix (n, k) their candidates' entity rows (-1 padded);
    losses: the mean training loss of each epoch, in order.
    """
    ties = score_matrix_ties(score_candidates(model, inputs, dev_rows, dev_matrix)) if len(dev_rows) else None
    collapse = diagnose(ties, losses, margin)
    if collapse is not None:
        accuracy = "n/a" if dev_accuracy is None else f"{dev_accuracy:.4f}"
        warn(logger, "W503", cause=collapse.cause, accuracy=accuracy, fix=collapse.fix)
    return collapse


def triage_first_accuracy(dev_matrix: np.ndarray, dev_gold: np.ndarray) -> float:
    """Share of dev mentions whose gold entity is triage's first candidate (recall@1 of triage; a NIL gold,
    -1, is never right). dev_matrix (n, k) entity rows in triage's rank order, -1 padded; dev_gold (n,)."""
    if len(dev_gold) == 0:
        return float("nan")
    return float(np.mean((dev_matrix[:, 0] == dev_gold) & (dev_gold >= 0)))


def check_below_triage(dev_accuracy: float | None, dev_matrix: np.ndarray, dev_gold: np.ndarray) -> float | None:
    """W504 when the ranker's best dev linking accuracy trails triage's first candidate on the same dev
    mentions by more than `BELOW_TRIAGE_MARGIN`: it re-ranks triage's candidates worse than triage's own
    order, so it learned too little. Returns triage's first-candidate accuracy (None without dev mentions)."""
    if dev_accuracy is None or len(dev_gold) == 0 or math.isnan(dev_accuracy):
        return None
    triage = triage_first_accuracy(dev_matrix, dev_gold)
    if dev_accuracy < triage - BELOW_TRIAGE_MARGIN:
        warn(logger, "W504", accuracy=f"{dev_accuracy:.4f}", triage=f"{triage:.4f}")
    return triage
