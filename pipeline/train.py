"""train: fit the ranker (§3.2) with the hinge loss (§3.3) on cached vectors.

Each step takes `batch_mentions` training mentions whose gold entity was encoded,
scores the gold and `negatives` sampled negatives (a share from the mention's own
candidates, the rest at random from the encoded entities), and minimises
max(0, margin - (gold - hardest negative)). Dev linking accuracy picks the best epoch
and stops early. Checkpoints make a killed run resume where it was.

The paper's settings choose the training mentions (`training_rows`: Mono, Multi,
MultiDS, zero-shot); `baseline = "nn"` trains nothing and saves the nearest-neighbour
scorer instead, which `load_model` returns like a ranker.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline import distributed, schema
from pipeline.config import RunConfig, TrainConfig, to_dict
from pipeline.distributed import World, sum_over_ranks
from pipeline.vectors import NAME_PAIRS, name_pairs_key, read_name_pair_vectors
from pipeline.errors import CacheError, InputError, warn
from pipeline.features import RankerInputs, candidate_matrix, gold_rows, load_inputs, score_candidates
from pipeline.inputs import read_name_pairs
from pipeline.io import collect_checked, scan_parquet_checked, write_parquet_atomic
from pipeline.model_file import MODEL, save_torch
from pipeline.progress import progress as progress_counter
from pipeline.ranker import NameMatching, NearestNeighbour, Ranker, RankerShape, hinge_loss
from pipeline.stage import StageResult, invalidate, is_up_to_date, stage_key, upstream_key, write_manifest

logger = logging.getLogger(__name__)

STAGE = "train"
STAGE_VERSION = 1
CHECKPOINT = "checkpoints/last.pt"
# Settings added after the first runs, with their defaults: left out of the stage key while
# at the default, so runs made before they existed stay up to date.
LATER_SETTINGS = {"downsample_to_language": "", "baseline": "none", "name_pairs": None, "name_pair_weight": 0.5,
                  "name_pair_negatives": 20, "weight_average": 0.0}
# The §7.1 settings count only while name matching is on: a weight of 0 trains exactly what
# no pairs file does, so it keeps that run's key. The file enters the key by content (inputs).
NAME_MATCHING_SETTINGS = ("name_pairs", "name_pair_weight", "name_pair_negatives")


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


def load_name_pairs(pairs_path: Path, encode_dir: Path, pairs_key: str, vector_size: int,
                    device: torch.device) -> NamePairs:
    """Join the pairs file with the names encode embedded (name_pairs.h5) by name, never by row order."""
    names, vectors = read_name_pair_vectors(encode_dir / NAME_PAIRS, pairs_key)
    if vectors.shape[1] != vector_size:
        raise CacheError("E407", path=encode_dir / NAME_PAIRS, stage="encode",
                         detail=f"holds {vectors.shape[1]}-wide vectors where vectors.h5 has {vector_size}")
    rows = pl.DataFrame({"name": names, "row": np.arange(len(names), dtype=np.int64)})
    pairs = (read_name_pairs(pairs_path)
             .join(rows.rename({"name": "foreign", "row": "foreign_row"}), on="foreign", how="left")
             .join(rows.rename({"name": "english", "row": "english_row"}), on="english", how="left")
             .sort("line"))
    if pairs["foreign_row"].null_count() or pairs["english_row"].null_count():
        raise CacheError("E407", path=encode_dir / NAME_PAIRS, stage="encode",
                         detail=f"lacks names of {pairs_path}")
    english = torch.from_numpy(pairs["english_row"].to_numpy().copy())
    return NamePairs(foreign=torch.from_numpy(pairs["foreign_row"].to_numpy().copy()), english=english,
                     english_pool=torch.unique(english), vectors=torch.from_numpy(vectors).to(device))


def assemble_name_pairs(pairs: NamePairs, picked: torch.Tensor, count: int, generator: torch.Generator,
                        device: torch.device, share: slice | None = None) -> tuple[tuple, torch.Tensor, int]:
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
    batch = (pairs.vectors[pairs.foreign[picked].to(device)], pairs.vectors[distinct.to(device)], english_index.to(device))
    return batch, negative_mask.to(device), with_negative


def sample_negatives(candidates: torch.Tensor, gold: torch.Tensor, count: int, hard_share: float, n_entities: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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


def rank_share(size: int, world: World) -> slice:
    """This rank's contiguous part of a batch of `size`; the parts are disjoint, cover it and differ by at most one."""
    return slice(world.rank * size // world.size, (world.rank + 1) * size // world.size)


def assemble_batch(inputs: RankerInputs, train_rows: np.ndarray, train_matrix: torch.Tensor, train_gold: torch.Tensor,
                   picked: torch.Tensor, config: TrainConfig, generator: torch.Generator, device: torch.device,
                   share: slice | None = None) -> tuple[tuple, torch.Tensor, int]:
    """Ranker inputs of the mentions at positions `picked` against [gold, negatives...], the negatives' mask,
    and how many of the `picked` mentions have a negative at all (the loss's divisor).

    train_rows (N,) mention rows; train_matrix (N, k) their candidates' entity rows (-1
    padded); train_gold (N,) their gold entity rows. Assembled by indexing the device
    tensors of `inputs`, with no per-example Python: this is what makes training from
    cached vectors fast (bench/train.py measures it).

    `share` (data-parallel training) keeps only this rank's part of the batch. Negatives
    are drawn for the whole batch first, so every rank's generator stays in step with the
    others and with a single-process run, and the parts together are that run's batch.
    """
    gold = train_gold[picked]
    negatives, negative_mask = sample_negatives(train_matrix[picked], gold, config.negatives,
                                                config.hard_negative_share, int(inputs.entity_name.shape[0]), generator)
    with_negative = -1
    if share is not None:
        with_negative = int(negative_mask.any(dim=1).sum())
        picked, gold, negatives, negative_mask = picked[share], gold[share], negatives[share], negative_mask[share]
    entity_rows = torch.cat([gold[:, None], negatives], dim=1).to(device)  # (B, 1 + n), the gold first
    batch = inputs.batch(torch.as_tensor(train_rows[picked.numpy()], device=device), entity_rows)
    return batch, negative_mask.to(device), with_negative


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: RankerInputs, train_rows: np.ndarray,
                train_matrix: torch.Tensor, train_gold: torch.Tensor, config: TrainConfig,
                generator: torch.Generator, device: torch.device, world: World = World(),
                name_pairs: NamePairs | None = None, pair_generator: torch.Generator | None = None
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
    model.train()
    order = torch.randperm(len(train_rows), generator=generator)
    pair_order = torch.randperm(len(name_pairs), generator=pair_generator) if name_pairs is not None else None
    total_loss, total_pair_loss = 0.0, 0.0
    for start in range(0, len(train_rows), config.batch_mentions):
        picked = order[start:start + config.batch_mentions]
        share = rank_share(len(picked), world) if world.distributed else None
        batch, negative_mask, with_negative = assemble_batch(inputs, train_rows, train_matrix, train_gold, picked,
                                                             config, generator, device, share)
        normaliser = max(with_negative, 1) / world.size if world.distributed else None
        if name_pairs is None:
            scores = model(*batch)
            loss = hinge_loss(scores[:, 0], scores[:, 1:], negative_mask, config.margin, normaliser)
            objective = loss
        else:
            pair_picked = pair_order[(start + torch.arange(len(picked))) % len(name_pairs)]
            pair_share = rank_share(len(pair_picked), world) if world.distributed else None
            pair_batch, pair_mask, pair_with_negative = assemble_name_pairs(
                name_pairs, pair_picked, config.name_pair_negatives, pair_generator, device, pair_share)
            scores, pair_scores = model(*batch, *pair_batch)
            loss = hinge_loss(scores[:, 0], scores[:, 1:], negative_mask, config.margin, normaliser)
            pair_loss = hinge_loss(pair_scores[:, 0], pair_scores[:, 1:], pair_mask, config.margin,
                                   max(pair_with_negative, 1) / world.size if world.distributed else None)
            objective = config.name_pair_weight * pair_loss + loss  # the paper's λ·N + L
            total_pair_loss += pair_loss.item() * len(pair_picked) / world.size
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        # Each rank adds its part of the batch's mean loss; the parts are summed over ranks below.
        total_loss += loss.item() * len(picked) / world.size
    mean_loss = sum_over_ranks(total_loss, world, device) / len(train_rows)
    if name_pairs is None:
        return mean_loss, None
    return mean_loss, sum_over_ranks(total_pair_loss, world, device) / len(train_rows)


def linking_accuracy(model: torch.nn.Module, inputs: RankerInputs, rows: np.ndarray, matrix: np.ndarray,
                     gold: np.ndarray) -> float:
    """Share of mentions whose best-scored candidate is the gold (gold missing = wrong)."""
    if len(rows) == 0:
        return float("nan")
    scores = score_candidates(model, inputs, rows, matrix)
    best = np.nanargmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    predicted = matrix[np.arange(len(rows)), best]
    return float(np.mean((predicted == gold) & (gold >= 0)))


def ranker_shape(config: TrainConfig, inputs: RankerInputs) -> RankerShape:
    return RankerShape(
        features=config.features, vector_size=int(inputs.mention_name.shape[1]),
        mention_types=int(inputs.mention_type_onehot.shape[1]), entity_types=int(inputs.entity_type_onehot.shape[1]),
        name_hidden=config.name_hidden, context_hidden=config.context_hidden, type_hidden=config.type_hidden,
        final_hidden=config.final_hidden, dropout=config.dropout, triage_hidden=config.triage_hidden)


def select_rows(mentions: pl.DataFrame, split: str, languages: tuple[str, ...]) -> np.ndarray:
    chosen = mentions.filter(pl.col("split") == split)
    if languages:
        chosen = chosen.filter(pl.col("lang").is_in(list(languages)))
    return chosen.filter(schema.linked_gold())["row"].to_numpy()


def training_rows(mentions: pl.DataFrame, gold: np.ndarray, languages: tuple[str, ...], downsample_to: str,
                  seed: int) -> np.ndarray:
    """Mention rows the ranker trains on, ascending: the paper's Mono, Multi, MultiDS and zero-shot.

    mentions: the mention table in row order (row, split, lang); gold: the entity row of
    every mention's gold (-1 for NIL or an unencoded entity, which cannot be trained on).
    Keeps training-split mentions with a gold row, in `languages` (all when empty). With
    `downsample_to` (MultiDS) keeps a random subset, seeded by `seed`, as large as that
    language's own such mentions; a set already that small is kept whole.
    """
    linkable = mentions.select("row", "split", "lang").with_columns(pl.Series("gold_row", gold)).filter(
        (pl.col("split") == "train") & (pl.col("gold_row") >= 0))
    chosen = linkable.filter(pl.col("lang").is_in(list(languages))) if languages else linkable
    rows = chosen["row"].to_numpy()
    if downsample_to:
        size = linkable.filter(pl.col("lang") == downsample_to).height
        if size < len(rows):
            rows = np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))
    return rows


def _load_checkpoint(path: Path, key: str, shape: RankerShape) -> dict | None:
    """The checkpoint to resume from, or None when there is none or it is of other inputs or settings.

    A checkpoint of this run's key whose ranker architecture differs from `shape` (or whose
    weights do not fit it) cannot be resumed: E505, rather than silently starting over.
    """
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CacheError("E402", path=path, detail=f"checkpoint cannot be read ({str(exc).splitlines()[0]})") from None
    if checkpoint.get("key") != key:
        logger.info("ignoring checkpoint %s: it belongs to other inputs or settings", path)
        return None
    saved = checkpoint.get("shape")
    if saved is not None and saved != dataclasses.asdict(shape):
        differ = sorted(k for k in set(saved) | set(dataclasses.asdict(shape))
                        if saved.get(k) != dataclasses.asdict(shape).get(k))
        raise CacheError("E505", path=path, detail=f"it differs in {', '.join(differ)}")
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


def run(config: RunConfig, force: bool = False) -> StageResult:
    """Train the ranker; under torchrun, as one of WORLD_SIZE data-parallel processes (`pipeline.distributed`)."""
    world = distributed.world_from_environment()
    with distributed.process_group(world, config.train.device):
        return _train(config, force, world)


def _train(config: RunConfig, force: bool, world: World) -> StageResult:
    started = time.time()
    out_dir = config.stage_dir(STAGE)
    triage_dir, encode_dir = config.stage_dir("triage"), config.stage_dir("encode")
    inputs_keys = {"triage": upstream_key(triage_dir, "triage"), "encode": upstream_key(encode_dir, "encode")}
    train_config = config.train
    if train_config.name_matching:
        if not train_config.name_pairs.is_file():
            raise InputError("E108", path=train_config.name_pairs)
        inputs_keys["name_pairs"] = name_pairs_key(inputs_keys["encode"], train_config.name_pairs)
    # Device and checkpoint frequency change speed and what a kill loses, not the model
    # (a resumed run equals an uninterrupted one: tests/test_crash_matrix.py).
    settings = {k: v for k, v in to_dict(train_config).items()
                if k not in ("device", "checkpoint_every") and LATER_SETTINGS.get(k, Ellipsis) != v
                and (k not in NAME_MATCHING_SETTINGS or (train_config.name_matching and k != "name_pairs"))}
    key = stage_key(STAGE, STAGE_VERSION, settings, inputs_keys)
    # Rank 0 decides and does the file work; the other ranks follow its decision, so they
    # cannot disagree while rank 0 is removing the manifest.
    up_to_date = not force and is_up_to_date(out_dir, key) if world.is_main else None
    if distributed.broadcast(up_to_date, world):
        return StageResult(STAGE, out_dir, skipped=True, seconds=time.time() - started)
    checkpoint_path = out_dir / CHECKPOINT
    if world.is_main:
        invalidate(out_dir, checkpoint_path.parent, settings=settings, inputs=inputs_keys)
        if force:
            checkpoint_path.unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(world)  # a forced run's old checkpoint is gone before any rank looks for one

    device = distributed.training_device(train_config.device, world)
    inputs, mention_types, entity_types = load_inputs(triage_dir, encode_dir, None, None, train_config.min_type_count, device)
    candidates_path = triage_dir / "candidates.parquet"
    candidates = collect_checked(scan_parquet_checked(candidates_path, schema.CANDIDATES, "triage").select(
        "mention_id", "rank", "kb_id", "score", "sources"), candidates_path)
    if "triage" in train_config.features:
        inputs.attach_triage(candidates)
    all_gold = gold_rows(inputs, np.arange(inputs.mentions.height))  # by mention row (inputs.mentions is in row order)
    train_rows = training_rows(inputs.mentions, all_gold, train_config.train_languages,
                               train_config.downsample_to_language, train_config.seed)
    train_gold = all_gold[train_rows]
    dev_rows = select_rows(inputs.mentions, "dev", train_config.train_languages)
    dev_matrix = candidate_matrix(candidates, inputs, dev_rows)
    dev_gold = all_gold[dev_rows]
    saved_rows = {"mention_types": mention_types, "entity_types": entity_types,
                  "train_mention_ids": inputs.mentions["mention_id"].to_numpy()[train_rows].tolist()}
    counts = {"train_mentions": len(train_rows), "dev_mentions": len(dev_rows)}
    by_language = dict(inputs.mentions[train_rows].group_by("lang").len().sort("lang").iter_rows())
    if train_config.baseline == "nn":
        # Nothing to fit: the cosine scores are the model. Dev accuracy is reported as for the ranker.
        result = StageResult(STAGE, out_dir, skipped=False, seconds=time.time() - started,
                             counts={**counts, "epochs": 0, "best_epoch": 0})
        if world.is_main:
            dev_accuracy = linking_accuracy(NearestNeighbour(), inputs, dev_rows, dev_matrix, dev_gold)
            save_torch(out_dir / MODEL, {"key": key, "baseline": "nn", "model": {}, "best_epoch": 0,
                                         "config": to_dict(train_config), **saved_rows})
            result = _finish(out_dir, key, inputs_keys, settings, [], {**counts, "epochs": 0, "best_epoch": 0},
                             dev_accuracy, 0, by_language, device, started, world)
        distributed.barrier(world)
        return result
    if len(train_rows) == 0:
        raise InputError("E112", path=triage_dir / "mentions.parquet", line="-",
                         detail="no training mention (of train_languages, if set) links to an encoded KB entity; "
                                "check the split, lang and gold_kb_id fields")
    train_matrix = candidate_matrix(candidates, inputs, train_rows)
    name_pairs = None
    if train_config.name_matching:
        name_pairs = load_name_pairs(train_config.name_pairs, encode_dir, inputs_keys["name_pairs"],
                                     int(inputs.mention_name.shape[1]), device)
        counts["name_pairs"] = len(name_pairs)

    torch.manual_seed(train_config.seed)
    shape = ranker_shape(train_config, inputs)
    model = Ranker(shape).to(device)
    # With name pairs the matching layer is made after the ranker, so the ranker starts from the
    # same weights as without; `objective` is what trains, `model` (the ranker) what is kept.
    objective: torch.nn.Module = NameMatching(model).to(device) if name_pairs is not None else model
    optimizer = torch.optim.Adam(objective.parameters(), lr=train_config.learning_rate)
    generator = torch.Generator().manual_seed(train_config.seed)
    # Pairs draw from a generator of their own (seed + 1), so the mentions' batches stay as without pairs.
    pair_generator = torch.Generator().manual_seed(train_config.seed + 1) if name_pairs is not None else None
    history: list[dict] = []
    best = {"score": -math.inf, "epoch": 0, "state": None}
    start_epoch = 1
    # The weight average (train.weight_average) is what is evaluated and kept; `model` trains.
    average = weight_average(model, train_config.weight_average)
    kept = average.module if average is not None else model
    checkpoint = _load_checkpoint(checkpoint_path, key, shape)
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:  # missing, unexpected or mis-sized weights
            raise CacheError("E505", path=checkpoint_path, detail=str(exc).splitlines()[0]) from None
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        history, best = checkpoint["history"], checkpoint["best"]
        if average is not None:
            average.load_state_dict(checkpoint["average"])
        if name_pairs is not None:
            objective.match.load_state_dict(checkpoint["name_match"])
            pair_generator.set_state(checkpoint["pair_generator"])
        start_epoch = checkpoint["epoch"] + 1
        logger.info("resuming training at epoch %d from %s", start_epoch, checkpoint_path)
    trained = objective
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # DDP starts every rank from rank 0's weights; the batch generator is seeded alike on
        # every rank (the ranks must draw the same batches), but dropout should not repeat the
        # same masks on every rank's other mentions: ranks other than 0 re-seed it.
        trained = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
        if not world.is_main:
            torch.manual_seed(train_config.seed + 100_003 * world.rank + start_epoch)

    if len(dev_rows) == 0 and world.is_main:
        warn(logger, "W501")
    train_matrix_tensor = torch.from_numpy(train_matrix)
    train_gold_tensor = torch.from_numpy(train_gold)
    # As the loop counts it: epochs from the best to the last evaluated one (not to the last
    # trained one: a checkpoint between evaluations would stop a resumed run too early).
    evaluated = [record["epoch"] for record in history if record["dev_accuracy"] is not None]
    stale_epochs = evaluated[-1] - best["epoch"] if evaluated else 0
    # A run killed after its early-stop checkpoint has finished training: train no further.
    stopped = train_config.patience > 0 and stale_epochs >= train_config.patience
    last_epoch = start_epoch - 1 if stopped else train_config.epochs
    progress = progress_counter(train_config.epochs, "train", "epochs", initial=start_epoch - 1, enabled=world.is_main)
    epoch = start_epoch - 1
    for epoch in range(start_epoch, last_epoch + 1):
        epoch_loss, pair_loss = train_epoch(trained, optimizer, inputs, train_rows, train_matrix_tensor,
                                            train_gold_tensor, train_config, generator, device, world, name_pairs,
                                            pair_generator)
        if average is not None:
            average.update_parameters(model)
        record = {"epoch": epoch, "loss": epoch_loss, "dev_accuracy": None}
        if name_pairs is not None:
            record["name_pair_loss"] = pair_loss
        # Only rank 0 evaluates, keeps the best state and writes checkpoints; its stop decision is broadcast.
        if world.is_main and (epoch % train_config.eval_every == 0 or epoch == train_config.epochs):
            record["dev_accuracy"] = linking_accuracy(kept, inputs, dev_rows, dev_matrix, dev_gold)
            # Without dev mentions the best epoch is the one of lowest training loss (W501).
            score = record["dev_accuracy"] if not math.isnan(record["dev_accuracy"]) else -record["loss"]
            if score > best["score"]:
                best = {"score": score, "epoch": epoch, "state": {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}}
            stale_epochs = epoch - best["epoch"]
            progress.set_postfix(loss=f"{record['loss']:.4f}", dev=f"{record['dev_accuracy']:.3f}")
        history.append(record)
        progress.update(1)
        stop = train_config.patience > 0 and stale_epochs >= train_config.patience
        if world.is_main and (epoch % train_config.checkpoint_every == 0 or stop or epoch == train_config.epochs):
            extra = {} if name_pairs is None else {"name_match": objective.match.state_dict(),
                                                   "pair_generator": pair_generator.get_state()}
            if average is not None:
                extra["average"] = average.state_dict()
            save_torch(checkpoint_path, {
                "key": key, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                "best": best, "shape": dataclasses.asdict(shape), "config": to_dict(train_config), **extra})
        if world.distributed:
            stop = distributed.broadcast(stop, world)
        if stop:
            if world.is_main:
                logger.info("early stop at epoch %d: dev accuracy has not improved for %d epochs", epoch, stale_epochs)
            break
    progress.close()

    result = StageResult(STAGE, out_dir, skipped=False, seconds=time.time() - started,
                         counts={**counts, "epochs": epoch, "best_epoch": best["epoch"]})
    if world.is_main:
        final_state = best["state"] if best["state"] is not None else kept.state_dict()
        save_torch(out_dir / MODEL, {"key": key, "model": final_state, "shape": dataclasses.asdict(shape),
                                     "best_epoch": best["epoch"], "config": to_dict(train_config), **saved_rows})
        result = _finish(out_dir, key, inputs_keys, settings, history,
                         {**counts, "epochs": epoch, "best_epoch": best["epoch"]},
                         best["score"] if len(dev_rows) else None, best["epoch"], by_language, device, started, world)
    distributed.barrier(world)  # the other ranks leave once rank 0's model and manifest are in place
    return result


def _finish(out_dir: Path, key: str, inputs_keys: dict, settings: dict, history: list[dict], counts: dict,
            best_score: float | None, best_epoch: int, by_language: dict, device: torch.device, started: float,
            world: World = World()) -> StageResult:
    """Write history.parquet and the manifest (last), once model.pt is in place.

    best_score: the best dev accuracy, None (or NaN) when there were no dev mentions.
    """
    if best_score is not None and math.isnan(best_score):
        best_score = None
    columns = {"epoch": pl.Int64, "loss": pl.Float64, "dev_accuracy": pl.Float64}
    if history and "name_pair_loss" in history[0]:
        columns["name_pair_loss"] = pl.Float64
    write_parquet_atomic(pl.DataFrame(history, schema=columns), out_dir / "history.parquet")
    write_manifest(out_dir, stage=STAGE, key=key, inputs=inputs_keys, settings=settings, counts=counts,
                   outputs=[MODEL, "history.parquet"], started=started,
                   extra={"best_dev_accuracy": best_score, "device": str(device), "train_mentions_by_language": by_language,
                          **({"world_size": world.size} if world.distributed else {})})
    return StageResult(STAGE, out_dir, skipped=False, seconds=time.time() - started, counts=counts,
                       summary={"best_dev_accuracy": best_score, "best_epoch": best_epoch})
