"""The reader's speed: training examples/s and scoring mentions/s, fp32 against bf16, and link with and without it.

    python bench/rerank.py --config configs/meantime.toml [--batches 20] [--link-mentions 200] [--device cpu]
                           [--parts train,score,link] [--repeats 3]

Needs a finished run of that config with the reader (`xel-cli run --config ... --set
rerank.enabled=true --set evaluate.nil_method=reader`, so that its model folder links with
the reader). Prints, side by side:

1. training: examples/s of `--batches` optimizer steps of `rerank.batch_mentions` training
   mentions, under fp32 and under bf16 autocast (the reader is re-made from the run's encoder
   for each; the first batch of each is a warm-up and not timed);
2. scoring: dev+test mentions/s of the run's trained reader, fp32, bf16 under autocast and with its
   encoder's weights cast to bf16 (how readers whose reader.json says cast_weights score);
3. link: mentions/s of `Linker.link` on `--link-mentions` test mentions, with the reader and
   with it switched off (the ranker's NIL decision): after a warm-up pass of each (it fills the
   entity-vector cache), the median of `--repeats` passes of each, taken in turn so that a change in
   the machine's load falls on both; and the ratio (the issue's goal: >= 0.5).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def training_rate(config, precision: str, batches: int, device: torch.device) -> float:
    """Training examples/s over `batches` timed steps (after one warm-up step)."""
    import dataclasses

    from pipeline.core.distributed import World
    from pipeline.rerank import stage, training

    rerank = config.rerank
    reader, _, data = stage._prepare(config, device)  # the stage's own reader: frozen layers, evidence
    data = dataclasses.replace(data, train_rows=data.train_rows[: (batches + 1) * rerank.batch_mentions])
    state = training.new_training(reader, (rerank.learning_rate, rerank.head_learning_rate), batches + 1)
    plan = training.Schedule(
        rerank.batch_mentions, 1, precision, rerank.seed, rerank.nil_hidden_share, rerank.shuffle_slots
    )

    class Count:
        started = None

        def update(self, _: int) -> None:
            self.started = self.started or time.perf_counter()  # after the warm-up batch

        def set_postfix(self, **_: object) -> None:
            pass

    counter = Count()
    training.train_epoch(state, data, 1, plan, World(), counter)
    return (len(data.train_rows) - rerank.batch_mentions) / (time.perf_counter() - counter.started)


SCORING_MODES = ("fp32", "bf16", "bf16 weights")


def scoring_rate(config, mode: str, device: torch.device) -> float:
    """Dev+test mentions/s of the run's trained reader: fp32; bf16 under autocast (fp32 weights); or
    "bf16 weights", its encoder cast to bf16 (`cast_encoder`, as readers with reader.json's
    cast_weights score)."""
    from pipeline.model.reader import cast_encoder, layout_of, load_reader, score_mentions
    from pipeline.rerank import stage

    reader, tokenizer, meta = load_reader(config.stage_dir("rerank") / stage.READER, device)
    reader.encoder.float()  # as trained, whatever reader.json says
    if mode == "bf16 weights":
        cast_encoder(reader, torch.bfloat16)
    mentions, examples = stage.read_examples(config, tokenizer, layout_of(meta), device)
    wanted = np.nonzero(mentions["split"].is_in(list(stage.SCORED_SPLITS)).to_numpy())[0]
    scored = examples.subset(wanted, with_gold=False)
    started = time.perf_counter()
    score_mentions(reader, scored, device, "fp32" if mode == "fp32" else "bf16")
    return len(wanted) / (time.perf_counter() - started)


def link_rates(config, count: int, device: str, repeats: int = 3) -> tuple[float, float]:
    """(mentions/s with the reader, without), `Linker.link` on `count` test mentions: after one warm-up
    pass of each (it fills the entity-vector cache), `repeats` timed passes of each, interleaved so that
    a change in the machine's load falls on both alike; the median of each."""
    import dataclasses

    from pipeline.link.linker import Linker

    linker = Linker.load(config.run_dir / "model", device=device)
    if linker.reader is None:
        raise SystemExit("the run's model does not link with the reader: run it with --set evaluate.nil_method=reader")
    from pipeline.formats import triage_tables

    mentions = triage_tables.read(config.stage_dir("triage"), triage_tables.MENTIONS).filter(pl.col("split") == "test")
    records = [
        {
            "id": r["mention_id"],
            # each mention brings its own context window as its text: one document per mention (a
            # document has one text, E120)
            "doc_id": r["mention_id"],
            "lang": r["lang"],
            "mention": r["mention"],
            "text": r["context"],
            "start": r["start"],
            "end": r["end"],
        }
        for r in mentions.head(count).to_dicts()
    ]
    reader, policy = linker.reader, linker.policy
    # without: the ranker's own NIL decision, as a run without the reader would make it
    without = dataclasses.replace(policy, artifact={**policy.artifact, "method": "threshold"})
    modes = {True: (reader, policy), False: (None, without)}

    def rate(with_reader: bool) -> float:
        linker.reader, linker.policy = modes[with_reader]
        started = time.perf_counter()
        linker.link(records)
        return len(records) / (time.perf_counter() - started)

    rate(True), rate(False)  # warm-up
    timed = [(rate(True), rate(False)) for _ in range(repeats)]
    linker.reader, linker.policy = reader, policy
    return float(np.median([t[0] for t in timed])), float(np.median([t[1] for t in timed]))


def main() -> None:
    from pipeline.core.config_file import load_config
    from pipeline.core.devices import pick_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--link-mentions", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="timed link passes of each, interleaved (median)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--parts", default="train,score,link", help="which of train, score, link to measure (comma-separated)"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1 (got {args.repeats})")
    parts = set(args.parts.split(","))
    config = load_config(args.config, ("rerank.enabled=true", *args.overrides))
    device = pick_device(args.device, "--device")
    torch.manual_seed(0)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'':<28}{'fp32':>10}{'bf16':>10}{'bf16/fp32':>11}")
    train = {}
    if "train" in parts:
        train = {precision: training_rate(config, precision, args.batches, device) for precision in ("fp32", "bf16")}
        print(
            f"{'training examples/s':<28}{train['fp32']:>10.1f}{train['bf16']:>10.1f}"
            f"{train['bf16'] / train['fp32']:>10.2f}x"
        )
    if "score" in parts:
        score = {mode: scoring_rate(config, mode, device) for mode in SCORING_MODES}
        print(
            f"{'scoring mentions/s':<28}{score['fp32']:>10.1f}{score['bf16']:>10.1f}"
            f"{score['bf16'] / score['fp32']:>10.2f}x"
        )
        cast = score["bf16 weights"]
        print(
            f"{'  bf16 weights':<28}{'':>10}{cast:>10.1f}{cast / score['fp32']:>10.2f}x"
            f"  ({cast / score['bf16']:.2f}x autocast)"
        )
    training_mentions = stage_counts(config).get("train_mentions")
    if train and training_mentions:
        fastest = max(train.values())
        minutes = config.rerank.epochs * training_mentions / fastest / 60
        print(
            f"training {config.rerank.epochs} epochs of {training_mentions} mentions at {fastest:.1f} examples/s: "
            f"about {minutes:.0f} min (goal <= 60); the run's rerank stage took {stage_counts(config)['seconds']:.0f} s"
        )
    if "link" in parts:
        with_reader, without = link_rates(config, args.link_mentions, args.device, args.repeats)
        print(
            f"link mentions/s: with the reader {with_reader:.1f}, without {without:.1f}, "
            f"ratio {with_reader / without:.2f} (goal >= 0.5)"
        )


def stage_counts(config) -> dict:
    """The finished rerank stage's counts with its seconds (its manifest), or {} without one."""
    from pipeline.core.manifest import read_manifest

    manifest = read_manifest(config.stage_dir("rerank")) or {}
    return {**manifest.get("counts", {}), "seconds": manifest.get("seconds", float("nan"))}


if __name__ == "__main__":
    main()
