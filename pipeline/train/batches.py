"""One epoch of the hinge loss (§3.3) over batches of training mentions, and dev linking accuracy.

Each step takes `batch_mentions` training mentions whose gold entity was encoded, scores
the gold and `negatives` sampled negatives (a share from the mention's own candidates, the
rest at random from the encoded entities) and minimises max(0, margin - (gold - hardest
negative)); under DDP every rank draws the same batch and trains on its own slice. §7.1
name pairs add their own matching loss to each step. With the ranker's NIL option
(`train.nil_candidate`, after ReFinED) NIL-gold mentions train too: see `nil_hinge_terms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.core.config import TrainConfig
from pipeline.core.distributed import World, sum_over_ranks
from pipeline.core.errors import CacheError
from pipeline.formats.name_pairs import read_name_pairs
from pipeline.formats.vectors import NAME_PAIRS, read_name_pair_vectors
from pipeline.model.features import RankerInputs, score_candidates, score_nil
from pipeline.model.ranker import hinge_loss


@dataclass
class NamePairs:
    """§7.1 name pairs as rows into `vectors`, the name vectors of every distinct name (on the device).

    foreign, english: (P,) CPU int64 rows of each pair's names; english_pool: (E,) the
    distinct English names' rows, which negatives are drawn from.
    """

    foreign: torch.Tensor
    english: torch.Tensor
    english_pool: torch.Tensor
    vectors: torch.Tensor

    def __len__(self) -> int:
        return int(self.foreign.shape[0])


def load_name_pairs(
    pairs_path: Path, encode_dir: Path, pairs_key: str, vector_size: int, device: torch.device
) -> NamePairs:
    """Join the pairs file with the names encode embedded (name_pairs.h5) by name, never by row order."""
    names, vectors = read_name_pair_vectors(encode_dir / NAME_PAIRS, pairs_key)
    if vectors.shape[1] != vector_size:
        raise CacheError(
            "E407",
            path=encode_dir / NAME_PAIRS,
            stage="encode",
            detail=f"holds {vectors.shape[1]}-wide vectors where vectors.h5 has {vector_size}",
        )
    rows = pl.DataFrame({"name": names, "row": np.arange(len(names), dtype=np.int64)})
    pairs = (
        read_name_pairs(pairs_path)
        .join(rows.rename({"name": "foreign", "row": "foreign_row"}), on="foreign", how="left")
        .join(rows.rename({"name": "english", "row": "english_row"}), on="english", how="left")
        .sort("line")
    )
    if pairs["foreign_row"].null_count() or pairs["english_row"].null_count():
        raise CacheError("E407", path=encode_dir / NAME_PAIRS, stage="encode", detail=f"lacks names of {pairs_path}")
    english = torch.from_numpy(pairs["english_row"].to_numpy().copy())
    return NamePairs(
        foreign=torch.from_numpy(pairs["foreign_row"].to_numpy().copy()),
        english=english,
        english_pool=torch.unique(english),
        vectors=torch.from_numpy(vectors).to(device),
    )


def assemble_name_pairs(
    pairs: NamePairs,
    picked: torch.Tensor,
    count: int,
    generator: torch.Generator,
    device: torch.device,
    share: slice | None = None,
) -> tuple[tuple, torch.Tensor, int]:
    """(foreign (P, H), distinct English names (U, H), index (P, 1 + count) into U), the negatives' mask
    (P, count) and how many pairs have a negative: the pairs at `picked` against [their English name,
    `count` English names of other pairs drawn at random]. A drawn name equal to the pair's own is masked.
    `share` as in `assemble_batch`.
    """
    gold = pairs.english[picked]
    negatives = pairs.english_pool[torch.randint(0, len(pairs.english_pool), (len(picked), count), generator=generator)]
    negative_mask = negatives != gold[:, None]
    with_negative = -1
    if share is not None:
        with_negative = int(negative_mask.any(dim=1).sum())
        picked, gold, negatives, negative_mask = picked[share], gold[share], negatives[share], negative_mask[share]
    distinct, english_index = torch.unique(torch.cat([gold[:, None], negatives], dim=1), return_inverse=True)
    batch = (
        pairs.vectors[pairs.foreign[picked].to(device)],
        pairs.vectors[distinct.to(device)],
        english_index.to(device),
    )
    return batch, negative_mask.to(device), with_negative


def sample_negatives(
    candidates: torch.Tensor,
    gold: torch.Tensor,
    count: int,
    hard_share: float,
    n_entities: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negatives (B, count) and their mask: hard ones from `candidates` (B, k; -1 padded), then random.

    The gold entity is never a negative; a hard slot with no candidate left is masked.
    """
    batch = candidates.shape[0]
    n_hard = min(int(round(count * hard_share)), candidates.shape[1])
    valid = (candidates >= 0) & (candidates != gold[:, None])
    keys = torch.rand(candidates.shape, generator=generator).masked_fill(~valid, 2.0)
    picked = torch.argsort(keys, dim=1)[:, :n_hard]
    hard = torch.gather(candidates, 1, picked)
    hard_mask = torch.gather(valid, 1, picked)
    random = torch.randint(0, n_entities, (batch, count - n_hard), generator=generator)
    random_mask = random != gold[:, None]
    return torch.cat([hard, random], dim=1).clamp(min=0), torch.cat([hard_mask, random_mask], dim=1)


@dataclass(frozen=True)
class TrainingMentions:
    """The mentions the ranker trains on, as `assemble_batch` indexes them: `inputs` (the ranker's
    device tensors), rows (N,) their mention rows, matrix (N, k) their candidates' entity rows (-1
    padded) and gold (N,) their gold entity rows (-1: a NIL gold, with the ranker's NIL option)."""

    inputs: RankerInputs
    rows: np.ndarray
    matrix: torch.Tensor
    gold: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class StepContext:
    """What every training step runs with besides the mentions: the [train] settings, the seeded generator
    that orders the mentions and draws their negatives, the device, and this process's place among the
    data-parallel ranks (`world`)."""

    config: TrainConfig
    generator: torch.Generator
    device: torch.device
    world: World = World()


def rank_share(size: int, world: World) -> slice:
    """This rank's contiguous part of a batch of `size`; the parts are disjoint, cover it and differ by at most one."""
    return slice(world.rank * size // world.size, (world.rank + 1) * size // world.size)


def assemble_batch(
    mentions: TrainingMentions, picked: torch.Tensor, step: StepContext, share: slice | None = None
) -> tuple[tuple, torch.Tensor, int]:
    """Ranker inputs of the mentions at positions `picked` against [gold, negatives...], the negatives' mask,
    and how many of the `picked` mentions have a negative at all (the loss's divisor).

    Assembled by indexing the device tensors of `mentions.inputs`, with no per-example Python: this is
    what makes training from cached vectors fast (bench/train.py measures it).

    `share` (data-parallel training) keeps only this rank's part of the batch. Negatives
    are drawn for the whole batch first, so every rank's generator stays in step with the
    others and with a single-process run, and the parts together are that run's batch.

    With `config.nil_candidate` the mask has one more column, the NIL option (see
    `nil_hinge_terms`): True for a linked mention, False for a NIL-gold one (gold row -1),
    whose negatives are all its sampled candidates. Without it, nothing here changes.
    """
    config, device = step.config, step.device
    gold = mentions.gold[picked]
    negatives, negative_mask = sample_negatives(
        mentions.matrix[picked],
        gold,
        config.negatives,
        config.hard_negative_share,
        int(mentions.inputs.entity_name.shape[0]),
        step.generator,
    )
    if config.nil_candidate:
        # The NIL option is every linked mention's last negative; a NIL mention (gold -1) has none there.
        negative_mask = torch.cat([negative_mask, (gold >= 0)[:, None]], dim=1)  # (B, n + 1)
    with_negative = -1
    if share is not None:
        with_negative = int(negative_mask.any(dim=1).sum())
        picked, gold, negatives, negative_mask = picked[share], gold[share], negatives[share], negative_mask[share]
    # (B, 1 + n), the gold first; a NIL mention's first column (entity 0) is a placeholder no loss reads.
    entity_rows = torch.cat([gold.clamp(min=0)[:, None], negatives], dim=1).to(device)
    batch = mentions.inputs.batch(torch.as_tensor(mentions.rows[picked.numpy()], device=device), entity_rows)
    return batch, negative_mask.to(device), with_negative


def nil_hinge_terms(
    scores: torch.Tensor, nil_scores: torch.Tensor, negative_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positive (B,), negatives (B, n + 1), mask (B, n + 1)) of `hinge_loss` with the NIL option (ReFinED's NOTA).

    scores (B, 1 + n): [gold, negatives...] as `assemble_batch` orders them; nil_scores (B,);
    negative_mask (B, n + 1) from `assemble_batch`, whose last column is False exactly for
    NIL-gold mentions. A linked mention's positive is its gold's score and its NIL score is
    one more negative (the gold must beat NIL by the margin); a NIL mention's positive is
    its NIL score and its negatives are its sampled candidates.
    """
    is_nil = ~negative_mask[:, -1]
    positive = torch.where(is_nil, nil_scores, scores[:, 0])
    return positive, torch.cat([scores[:, 1:], nil_scores[:, None]], dim=1), negative_mask


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    mentions: TrainingMentions,
    step: StepContext,
    name_pairs: NamePairs | None = None,
    pair_generator: torch.Generator | None = None,
) -> tuple[float, float | None]:
    """One pass over the training mentions (see `assemble_batch`) in a seeded random order; the mean
    ranking loss L, and the mean name-matching loss N (None without name pairs).

    With `name_pairs` (§7.1; `model` is then a `NameMatching`), each step also takes as many
    pairs as mentions, the next of this epoch's seeded pair order (wrapping around), and
    minimises name_pair_weight * N + L. Pairs draw from `pair_generator`, so the mentions'
    batches and negatives are those of a run without pairs.

    Data-parallel (`world.size` > 1, `model` wrapped in DDP): every rank walks the same
    order of the same global batches of `batch_mentions` and trains on its share of each.
    Its loss is its share's sum over the whole batch's count times the world size, so
    DDP's averaged gradient is the gradient of the whole batch's mean loss: the same step
    as one process takes, up to float summation order.
    """
    config, world = step.config, step.world
    model.train()
    order = torch.randperm(len(mentions), generator=step.generator)
    pair_order = torch.randperm(len(name_pairs), generator=pair_generator) if name_pairs is not None else None
    extra = {"with_nil": True} if config.nil_candidate else {}
    total_loss, total_pair_loss = 0.0, 0.0
    for start in range(0, len(mentions), config.batch_mentions):
        picked = order[start : start + config.batch_mentions]
        share = rank_share(len(picked), world) if world.distributed else None
        batch, negative_mask, with_negative = assemble_batch(mentions, picked, step, share)
        if name_pairs is None:
            loss = ranking_loss(model(*batch, **extra), negative_mask, config, _normaliser(with_negative, world))
            objective = loss
        else:
            pair_picked = pair_order[(start + torch.arange(len(picked))) % len(name_pairs)]
            pair_share = rank_share(len(pair_picked), world) if world.distributed else None
            pair_batch, pair_mask, pair_with_negative = assemble_name_pairs(
                name_pairs, pair_picked, config.name_pair_negatives, pair_generator, step.device, pair_share
            )
            scores, pair_scores = model(*batch, *pair_batch, **extra)
            loss = ranking_loss(scores, negative_mask, config, _normaliser(with_negative, world))
            pair_normaliser = _normaliser(pair_with_negative, world)
            pair_loss = hinge_loss(pair_scores[:, 0], pair_scores[:, 1:], pair_mask, config.margin, pair_normaliser)
            objective = config.name_pair_weight * pair_loss + loss  # the paper's λ·N + L
            total_pair_loss += pair_loss.item() * len(pair_picked) / world.size
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        # Each rank adds its part of the batch's mean loss; the parts are summed over ranks below.
        total_loss += loss.item() * len(picked) / world.size
    mean_loss = sum_over_ranks(total_loss, world, step.device) / len(mentions)
    if name_pairs is None:
        return mean_loss, None
    return mean_loss, sum_over_ranks(total_pair_loss, world, step.device) / len(mentions)


def _normaliser(with_negative: int, world: World) -> float | None:
    """`hinge_loss`'s divisor for this rank's share of a batch: the whole batch's count of examples with a
    negative over the world size (so DDP's averaged gradient is the whole batch's); None in one process."""
    return max(with_negative, 1) / world.size if world.distributed else None


def ranking_loss(
    scores: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    negative_mask: torch.Tensor,
    config: TrainConfig,
    normaliser: float | None,
) -> torch.Tensor:
    """`hinge_loss` of the ranker's output: scores (B, 1 + n) against the mask (B, n), or, with the
    NIL option, (scores, NIL scores (B,)) against the mask (B, n + 1) (`nil_hinge_terms`)."""
    if not config.nil_candidate:
        return hinge_loss(scores[:, 0], scores[:, 1:], negative_mask, config.margin, normaliser)
    positive, negatives, mask = nil_hinge_terms(*scores, negative_mask)
    return hinge_loss(positive, negatives, mask, config.margin, normaliser)


def linking_accuracy(
    model: torch.nn.Module,
    inputs: RankerInputs,
    rows: np.ndarray,
    matrix: np.ndarray,
    gold: np.ndarray,
    nil_gold: np.ndarray | None = None,
) -> float:
    """Share of mentions whose best-scored candidate is the gold (gold missing = wrong).

    With `nil_gold` ((len(rows),) bool, True for NIL golds; a ranker with the NIL option),
    the NIL option counts as one more candidate: a NIL mention is right when its NIL score
    beats every candidate's (or it has none), a linked one when its gold is the best
    candidate and beats the NIL score. This is dev micro-average under evaluate's "nota".
    """
    if len(rows) == 0:
        return float("nan")
    scores = score_candidates(model, inputs, rows, matrix)
    filled = np.where(np.isnan(scores), -np.inf, scores)
    best = np.argmax(filled, axis=1)
    predicted = matrix[np.arange(len(rows)), best]
    linked_right = (predicted == gold) & (gold >= 0)
    if nil_gold is None:
        return float(np.mean(linked_right))
    says_nil = score_nil(model, inputs, rows) > filled.max(axis=1)
    return float(np.mean(np.where(nil_gold, says_nil, linked_right & ~says_nil)))
