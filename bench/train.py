"""Benchmark: training examples/s of our path against a naive per-example DataLoader.

Both train the same ranker (paper sizes by default) with the same hinge loss, Adam and
batch of 100 mentions with 20 negatives (half from the mention's candidates), on the
same synthetic `vectors.h5` written here (5k mentions, 2k entities, 384-d, k = 10
candidates and a gold per mention, 8 types), so no shared data is needed.

- ours: what `pipeline.train.stage` does: the HDF5 arrays are read into tensors once, then
  `train_epoch` runs, whose `assemble_batch` builds every batch by index tensors
  (`RankerInputs.batch`, vectorised `sample_negatives`).
- naive: a `torch.utils.data.Dataset` that opens the HDF5 file (and its datasets) once
  and in `__getitem__` reads one mention's vectors, its candidates and gold, samples its
  negatives in Python (`random.sample`) and reads each entity's vectors by h5py, one row
  at a time; the default `DataLoader` collate stacks them. Every (mention, entity) pair
  is fed to the ranker as its own entity row.

Prints examples (training mentions) per second of each, side by side, and the ratio:
for whole training steps, and for batch assembly alone. A step's model work is the same
on both sides, so where it dominates (the paper's sizes on a CPU) the training ratio
shrinks towards 1; on a GPU, where that work is small, it approaches the assembly ratio.

    python bench/train.py [--mentions 5000] [--entities 2000] [--dim 384] [--batches 10]
                          [--rounds 3] [--workers 0] [--small] [--contiguous] [--threads N]
    python bench/train.py --ours-only --device cuda --precisions fp32,bf16 [--record FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.config import TrainConfig  # noqa: E402
from pipeline.encoders.precision import Precision  # noqa: E402
from pipeline.model.features import RankerInputs  # noqa: E402
from pipeline.model.ranker import Ranker, RankerShape, hinge_loss  # noqa: E402
from pipeline.train.batches import StepContext, TrainingMentions, assemble_batch, train_epoch  # noqa: E402
from pipeline.train.state import ranker_shape  # noqa: E402

N_TYPES = 8


def write_synthetic(
    path: Path, n_mentions: int, n_entities: int, dim: int, k: int, seed: int, contiguous: bool
) -> None:
    """vectors.h5 laid out as encode writes it (chunks of 4096 rows), plus bench-only
    /bench/{candidates,gold} and types. `contiguous` stores the vectors unchunked, to
    check that the chunk layout is not what slows the naive reader (about 10% here)."""
    rng = np.random.default_rng(seed)
    candidates = np.stack([rng.choice(n_entities, k, replace=False) for _ in range(n_mentions)])
    gold = candidates[np.arange(n_mentions), rng.integers(0, k, n_mentions)]
    with h5py.File(path, "w") as handle:
        for group, n in (("mentions", n_mentions), ("entities", n_entities)):
            part = handle.create_group(group)
            part.create_dataset(
                "id", data=np.array([f"{group[0]}{i}" for i in range(n)], dtype=object), dtype=h5py.string_dtype()
            )
            chunks = None if contiguous else (min(n, 4096), dim)
            part.create_dataset("name", data=rng.standard_normal((n, dim), dtype=np.float32), chunks=chunks)
            part.create_dataset("context", data=rng.standard_normal((n, dim), dtype=np.float32), chunks=chunks)
            part.create_dataset("type", data=rng.integers(0, N_TYPES, n))
        handle.create_dataset("bench/candidates", data=candidates)
        handle.create_dataset("bench/gold", data=gold)


# --- ours -------------------------------------------------------------------------------------


def load_ours(path: Path) -> tuple[RankerInputs, np.ndarray, torch.Tensor, torch.Tensor]:
    """Everything read from HDF5 into tensors once, as pipeline.model.features.load_inputs does."""
    with h5py.File(path, "r") as handle:
        mentions, entities = handle["mentions"], handle["entities"]
        n_mentions, n_entities = len(mentions["id"]), len(entities["id"])
        inputs = RankerInputs(
            mentions=pl.DataFrame({"row": np.arange(n_mentions)}),
            entity_ids=pl.DataFrame({"row": np.arange(n_entities)}),
            mention_name=torch.from_numpy(mentions["name"][:]),
            mention_context=torch.from_numpy(mentions["context"][:]),
            entity_name=torch.from_numpy(entities["name"][:]),
            entity_context=torch.from_numpy(entities["context"][:]),
            mention_type_onehot=torch.eye(N_TYPES)[torch.from_numpy(mentions["type"][:])],
            entity_type_onehot=torch.eye(N_TYPES)[torch.from_numpy(entities["type"][:])],
        )
        candidates = torch.from_numpy(handle["bench/candidates"][:])
        gold = torch.from_numpy(handle["bench/gold"][:])
    return inputs, np.arange(n_mentions), candidates, gold


def ours_rounds(
    path: Path, config: TrainConfig, batches: int, device: torch.device = torch.device("cpu"), precision: str = "fp32"
):
    """(load seconds, train round, assembly round): each round times `batches` batches, in examples/s.
    The ranker runs on `device`, its steps under `precision`'s autocast (bf16, fp16; fp32: none)."""
    started = time.perf_counter()
    inputs, rows, candidates, gold = load_ours(path)
    load_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)
    model = Ranker(ranker_shape(config, inputs)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    autocast = Precision.resolve(precision, device.type, where="--precision")
    size = batches * config.batch_mentions
    step = StepContext(config, generator, device)
    everyone = TrainingMentions(inputs, rows, candidates, gold)

    def train_round() -> float:
        # An "epoch" over a random subset of `batches` batches: exactly what pipeline.train.stage runs.
        subset = torch.randperm(len(rows), generator=generator)[:size]
        started = time.perf_counter()
        with autocast.autocast():
            train_epoch(
                model, optimizer, TrainingMentions(inputs, rows[subset.numpy()], candidates[subset], gold[subset]), step
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return size / (time.perf_counter() - started)

    def assembly_round() -> float:
        order = torch.randperm(len(rows), generator=generator)
        started = time.perf_counter()
        for start in range(0, size, config.batch_mentions):
            assemble_batch(everyone, order[start : start + config.batch_mentions], step)
        return size / (time.perf_counter() - started)

    return load_seconds, train_round, assembly_round


# --- naive ------------------------------------------------------------------------------------


class PerExampleDataset(Dataset):
    """One training example per __getitem__, read from HDF5 by h5py (the common first version)."""

    def __init__(self, path: Path, negatives: int, hard_share: float) -> None:
        self.path, self.negatives, self.n_hard = path, negatives, int(round(negatives * hard_share))
        self.handle: h5py.File | None = None  # opened lazily, once per worker process
        with h5py.File(path, "r") as handle:
            self.n_mentions, self.n_entities = len(handle["mentions/id"]), len(handle["entities/id"])

    def __len__(self) -> int:
        return self.n_mentions

    def open(self) -> None:
        # Dataset handles are looked up once: h5py's path lookups cost more than a row read.
        self.handle = h5py.File(self.path, "r")
        self.columns = {
            f"{group}/{name}": self.handle[f"{group}/{name}"]
            for group in ("mentions", "entities", "bench")
            for name in self.handle[group]
        }

    def entity(self, row: int) -> tuple[np.ndarray, np.ndarray, int]:
        columns = self.columns
        return columns["entities/name"][row], columns["entities/context"][row], int(columns["entities/type"][row])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.handle is None:
            self.open()
        columns = self.columns
        gold = int(columns["bench/gold"][index])
        others = [int(c) for c in columns["bench/candidates"][index] if c != gold]
        hard = random.sample(others, min(self.n_hard, len(others)))
        rest = [random.randrange(self.n_entities) for _ in range(self.negatives - len(hard))]
        rows = [gold] + hard + rest
        names, contexts, types = zip(*(self.entity(row) for row in rows))
        return {
            "mention_name": torch.from_numpy(columns["mentions/name"][index]),
            "mention_context": torch.from_numpy(columns["mentions/context"][index]),
            "mention_type": torch.eye(N_TYPES)[int(columns["mentions/type"][index])],
            "entity_name": torch.from_numpy(np.stack(names)),
            "entity_context": torch.from_numpy(np.stack(contexts)),
            "entity_type": torch.eye(N_TYPES)[list(types)],
            "negative_mask": torch.tensor([row != gold for row in rows[1:]]),
        }


def naive_loader(path: Path, config: TrainConfig, workers: int) -> DataLoader:
    dataset = PerExampleDataset(path, config.negatives, config.hard_negative_share)
    return DataLoader(dataset, batch_size=config.batch_mentions, shuffle=True, num_workers=workers)


def naive_rounds(path: Path, config: TrainConfig, batches: int, workers: int):
    """(train round, assembly round): each round times `batches` batches from the DataLoader, in examples/s."""
    loader = naive_loader(path, config, workers)
    with h5py.File(path, "r") as handle:
        dim = handle["mentions/name"].shape[1]
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    shape = RankerShape(
        features=config.features,
        vector_size=dim,
        mention_types=N_TYPES,
        entity_types=N_TYPES,
        name_hidden=config.name_hidden,
        context_hidden=config.context_hidden,
        type_hidden=config.type_hidden,
        final_hidden=config.final_hidden,
        dropout=config.dropout,
    )
    model = Ranker(shape).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    stream = iter(())

    def next_batch() -> dict[str, torch.Tensor]:
        nonlocal stream
        batch = next(stream, None)
        if batch is None:  # a new epoch
            stream = iter(loader)
            batch = next(stream)
        return batch

    def step(batch: dict[str, torch.Tensor]) -> None:
        batch_size, width = batch["entity_name"].shape[:2]
        mentions = {"name": batch["mention_name"], "context": batch["mention_context"], "type": batch["mention_type"]}
        # Each pair's entity is its own row: (B * (1 + n), H), indexed back as (B, 1 + n).
        entities = {
            "name": batch["entity_name"].flatten(0, 1),
            "context": batch["entity_context"].flatten(0, 1),
            "type": batch["entity_type"].flatten(0, 1),
        }
        index = torch.arange(batch_size * width).view(batch_size, width)
        scores = model(mentions, entities, index)
        loss = hinge_loss(scores[:, 0], scores[:, 1:], batch["negative_mask"], config.margin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def train_round() -> float:
        started, examples = time.perf_counter(), 0
        for _ in range(batches):
            batch = next_batch()
            step(batch)
            examples += len(batch["mention_name"])
        return examples / (time.perf_counter() - started)

    def assembly_round() -> float:
        started, examples = time.perf_counter(), 0
        for _ in range(batches):
            examples += len(next_batch()["mention_name"])
        return examples / (time.perf_counter() - started)

    return train_round, assembly_round


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = f"ranker on {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "no GPU (CPU training)"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"h5py {h5py.__version__}, {where}"
    )


def ours_only(path: Path, config: TrainConfig, args: argparse.Namespace) -> None:
    """Print (and append to --record) our training examples/s on --device at each of --precisions."""
    device = torch.device(args.device)
    rates = {}
    for precision in args.precisions.split(","):
        _, train_round, _ = ours_rounds(path, config, args.batches, device, precision)
        train_round()  # warm-up
        rates[precision] = max(train_round() for _ in range(args.rounds))
    for precision, rate in rates.items():
        print(
            f"training on {device} at {precision}: {rate:10.0f} examples/s "
            f"({rate / rates[next(iter(rates))]:.2f}x {next(iter(rates))})"
        )
        record(args.record, "train", precision, "examples/s", rate)


def record(path: str | None, bench: str, precision: str, measure: str, value: float) -> None:
    """Append one figure as a JSON line to `path` (bench/gpu.sh's table reads them); nothing when None."""
    if path:
        with open(path, "a", encoding="utf-8") as lines:
            lines.write(json.dumps({"bench": bench, "precision": precision, "measure": measure, "value": value}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mentions", type=int, default=5000)
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batches", type=int, default=10, help="batches per timed round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed rounds, ours and naive alternating; the best of each is reported"
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes of the naive path")
    parser.add_argument(
        "--small",
        action="store_true",
        help="a small ranker (64-unit layers) instead of the paper's sizes, so input handling dominates",
    )
    parser.add_argument(
        "--contiguous",
        action="store_true",
        help="store vectors unchunked (cheaper single-row reads) instead of encode's 4096-row chunks",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the ranker trains (with --ours-only)")
    parser.add_argument(
        "--precisions",
        default="fp32",
        help="with --ours-only: comma-separated autocast precisions of the steps (fp32, bf16, fp16)",
    )
    parser.add_argument(
        "--ours-only",
        action="store_true",
        help="time only our path, on --device at each of --precisions (no naive comparison)",
    )
    parser.add_argument("--record", default=None, help="append each figure as a JSON line to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig()
    if args.small:
        config = TrainConfig(name_hidden=(64,), context_hidden=(64,), type_hidden=(16,), final_hidden=(64,))
    print(f"machine: {machine(torch.device(args.device))}")
    print(
        f"data: {args.mentions} mentions, {args.entities} entities, {args.dim}-d, k={args.k}; ranker "
        f"name {list(config.name_hidden)} context {list(config.context_hidden)} type {list(config.type_hidden)} "
        f"final {list(config.final_hidden)}; batch {config.batch_mentions} mentions x {config.negatives} negatives; "
        f"HDF5 vectors {'contiguous' if args.contiguous else 'in 4096-row chunks, as encode writes them'}"
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vectors.h5"
        write_synthetic(path, args.mentions, args.entities, args.dim, args.k, args.seed, args.contiguous)
        if args.ours_only:
            ours_only(path, config, args)
            return
        load_seconds, ours_train, ours_assembly = ours_rounds(path, config, args.batches)
        naive_train, naive_assembly = naive_rounds(path, config, args.batches, args.workers)
        ours_train(), naive_train()  # warm-up
        # Alternating rounds, best of each: load from elsewhere on the machine then hits both
        # sides, and the best round of each is the least disturbed one.
        rates = {name: [] for name in ("ours", "naive", "ours_input", "naive_input")}
        for _ in range(args.rounds):
            for name, measure in (
                ("ours", ours_train),
                ("naive", naive_train),
                ("ours_input", ours_assembly),
                ("naive_input", naive_assembly),
            ):
                rates[name].append(measure())
        ours, naive, ours_input, naive_input = (max(rates[name]) for name in rates)
    print("training (batches + model step + Adam), examples/s:")
    print(f"  ours : {ours:10.0f}  (HDF5 -> tensors once: {load_seconds * 1000:.0f} ms, not counted)")
    print(f"  naive: {naive:10.0f}  (per-example h5py Dataset, DataLoader num_workers={args.workers})")
    print(f"  ratio: {ours / naive:.1f}x")
    print("batch assembly alone (no model), examples/s:")
    print(f"  ours : {ours_input:10.0f}")
    print(f"  naive: {naive_input:10.0f}")
    print(f"  ratio: {ours_input / naive_input:.1f}x")


if __name__ == "__main__":
    main()
