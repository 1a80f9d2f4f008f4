"""Benchmark: xel's own thread count against 1 and 2 torch threads, on a machine kept busy.

Issue 21 measured the demo's training at 359 s with torch's default threads on a loaded
2-core machine and 15 s with OMP_NUM_THREADS=1. This starts as many busy processes as the
machine has CPUs (each spins until a deadline, so none outlives the bench), then times two
fixed workloads in fresh processes, each at three settings:

- default: what `xel-cli` does (`pipeline.core.threads`: its count from OMP_NUM_THREADS or the
  CPUs it may use, and the ranker on one thread, `small_model_threads`);
- 1 and 2: torch forced to that many threads for everything (2 is torch's own default here).

Workloads (synthetic, no files needed):
- train: `train_epoch` of a demo-shaped ranker (the demo's layer sizes, 384-d vectors,
  160 training mentions in batches of 32, 20 negatives), `--epochs` epochs;
- encode: forward passes of a 4-layer 384-wide BERT (e5-small's width) over 64 texts of 64
  sub-words, as encode batches them.

Prints seconds per workload and setting side by side, and default / best (1.5 or less is
the goal).

    python bench/threads.py [--epochs 2] [--rounds 2] [--busy N] [--no-busy]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("default", "1", "2")


def busy_processes(count: int, seconds: float) -> list[subprocess.Popen]:
    """`count` processes that each spin a CPU for `seconds`, then exit on their own."""
    spin = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]


def train_workload(epochs: int) -> float:
    """Seconds of `epochs` ranker epochs (demo sizes) on synthetic cached vectors."""
    import numpy as np
    import polars as pl
    import torch

    from pipeline.core.config import TrainConfig
    from pipeline.model.features import RankerInputs
    from pipeline.train.batches import StepContext, TrainingMentions, train_epoch
    from pipeline.train.state import new_state, ranker_shape

    generator = np.random.default_rng(0)
    n_mentions, n_entities, dim, k = 160, 70, 384, 10
    inputs = RankerInputs(
        mentions=pl.DataFrame({"row": np.arange(n_mentions)}),
        entity_ids=pl.DataFrame({"row": np.arange(n_entities)}),
        mention_name=torch.from_numpy(generator.standard_normal((n_mentions, dim), dtype=np.float32)),
        mention_context=torch.from_numpy(generator.standard_normal((n_mentions, dim), dtype=np.float32)),
        entity_name=torch.from_numpy(generator.standard_normal((n_entities, dim), dtype=np.float32)),
        entity_context=torch.from_numpy(generator.standard_normal((n_entities, dim), dtype=np.float32)),
        mention_type_onehot=torch.eye(8)[generator.integers(0, 8, n_mentions)],
        entity_type_onehot=torch.eye(8)[generator.integers(0, 8, n_entities)],
    )
    config = TrainConfig(
        learning_rate=1e-3,
        batch_mentions=32,
        name_hidden=(256,),
        context_hidden=(256,),
        type_hidden=(32,),
        final_hidden=(256, 128),
        min_type_count=1,
    )
    candidates = np.stack([generator.choice(n_entities, k, replace=False) for _ in range(n_mentions)])
    gold = torch.from_numpy(candidates[:, 0].copy())
    state = new_state(config, ranker_shape(config, inputs), torch.device("cpu"), name_pairs=False)
    started = time.perf_counter()
    for _ in range(epochs):
        train_epoch(
            state.model,
            state.optimizer,
            TrainingMentions(inputs, np.arange(n_mentions), torch.from_numpy(candidates), gold),
            StepContext(config, state.generator, torch.device("cpu")),
        )
    return time.perf_counter() - started


def encode_workload(rounds: int) -> float:
    """Seconds of `rounds` forward passes of a 4-layer 384-wide BERT over a batch of 64 x 64 sub-words."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=1000, hidden_size=384, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1536
        ),
        add_pooling_layer=False,
    ).eval()
    ids = torch.randint(0, 1000, (64, 64))
    with torch.inference_mode():
        model(input_ids=ids[:8], attention_mask=torch.ones_like(ids[:8]))  # warm-up: first-call allocations
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(rounds):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return time.perf_counter() - started


def child(setting: str, epochs: int, rounds: int) -> None:
    """Time both workloads at one setting in this (fresh) process; print {workload: {"seconds", "threads"}} as JSON."""
    sys.path.insert(0, str(ROOT))
    import contextlib

    from pipeline.core.threads import apply_threads, choose_threads, small_model_threads

    if setting == "default":
        apply_threads(choose_threads(None)[0])  # what xel-cli's main does
    else:
        apply_threads(int(setting))
    import torch

    results = {}
    # The default trains as `pipeline.train.stage.run` does; the forced settings keep their count.
    with small_model_threads() if setting == "default" else contextlib.nullcontext():
        results["train"] = {"threads": torch.get_num_threads(), "seconds": train_workload(epochs)}
    results["encode"] = {"threads": torch.get_num_threads(), "seconds": encode_workload(rounds)}
    print(json.dumps(results))


def measure(setting: str, epochs: int, rounds: int) -> dict:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", setting, str(epochs), str(rounds)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="ranker epochs per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="encoder forward passes per measurement")
    parser.add_argument("--busy", type=int, default=None, help="busy processes (default: one per CPU)")
    parser.add_argument("--no-busy", action="store_true", help="time an idle machine instead")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    sys.path.insert(0, str(ROOT))
    from pipeline.core.threads import available_cpus

    cpus = available_cpus()
    busy_count = 0 if args.no_busy else (args.busy if args.busy is not None else cpus)
    busy = busy_processes(busy_count, seconds=240)  # a bound: they are stopped when the bench ends
    print(f"{cpus} CPU(s) available, {busy_count} busy process(es); seconds per workload (torch threads used)")
    try:
        results = {setting: measure(setting, args.epochs, args.rounds) for setting in SETTINGS}
    finally:
        for process in busy:
            process.kill()
            process.wait()
    print(f"{'workload':<10}" + "".join(f"{s:>16}" for s in SETTINGS) + f"{'default/best':>14}")
    for workload in ("train", "encode"):
        best = min(results[s][workload]["seconds"] for s in SETTINGS)
        cells = "".join(
            f"{results[s][workload]['seconds']:>12.2f} ({results[s][workload]['threads']})" for s in SETTINGS
        )
        print(f"{workload:<10}{cells}{results['default'][workload]['seconds'] / best:>14.2f}")


if __name__ == "__main__":
    main()
