"""Benchmark: our encode path against a raw batched forward (the ceiling) and the paper code's way.

On MEANTIME's named mentions (read as the triage stage reads them, `configs/meantime.toml`),
with the offline multilingual-e5-small or, with `--mbert-shaped`, a randomly initialised
BertModel of bert-base-multilingual-cased's shape and the real mBERT vocabulary. Times,
in one process on the same mentions:

  (a) ours: planning (tokenise, window, de-duplicate) + chunked, length-sorted batched
      forward passes + pooling + chunk files, as `xel-cli encode` runs them;
  (b) the ceiling: only the model's forward passes over exactly the distinct texts (a)
      encodes, in the same batches (same chunks, same token budget);
  (c) the paper code's way: per mention, one forward pass over its sentence (name vector)
      and one over its context window (context vector), batch of one, no de-duplication;
      timed on a sample and extrapolated per mention.

Only mention vectors are made (no entities), the same for all three.

Then, unless `--precisions ""`, the same encode path (a) at each `[encoder] precision` of
`--precisions` (default fp32,bf16,int8; int8 is CPU-only and skipped on a GPU) side by side:
distinct texts/s, the speed ratio to fp32, and the mean (and lowest) cosine of each context and
mention-string vector to its fp32 vector. `--precisions-only` skips (a)-(c) and prints only that.

    python bench/encode.py [--limit 500] [--paper-sample 100] [--repeats 2] [--mbert-shaped] [--device cpu]
                           [--precisions fp32,bf16,int8] [--precisions-only] [--max-context-tokens N] [--record FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.config import EncoderConfig  # noqa: E402
from pipeline.core.config_file import load_config  # noqa: E402
from pipeline.core.devices import pick_device  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.encoders.chunks import chunk_units, encode_in_chunks  # noqa: E402
from pipeline.encoders.encoder import LoadedEncoder, length_batches, load_encoder, token_span  # noqa: E402
from pipeline.encoders.plan import plan_units  # noqa: E402
from pipeline.encoders.precision import Precision, cpu_flags  # noqa: E402
from pipeline.formats.inputs import load_mentions  # noqa: E402

MEANTIME = ROOT.parent / "shared" / "data" / "meantime"
MBERT_VOCAB = ROOT.parent / "shared" / "models" / "mbert-vocab"


def mbert_shaped(device: torch.device) -> LoadedEncoder:
    """bert-base-multilingual-cased's architecture with random weights and its real WordPiece vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(MBERT_VOCAB))
    config = BertConfig(
        vocab_size=119547,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False).to(device).eval()
    precision = Precision.resolve("auto", device.type)
    return LoadedEncoder(
        "mbert-shaped (random weights)", str(MBERT_VOCAB), "random", tokenizer, model, device, precision, 768, 12
    )


@torch.inference_mode()
def ceiling(encoder: LoadedEncoder, units: list[np.ndarray], chunks: list[np.ndarray], batch_tokens: int) -> None:
    """Only the forward passes of `units`, batched exactly as encode batches them."""
    pad_id = encoder.tokenizer.pad_token_id or 0
    for chunk in chunks:
        for _, input_ids, mask in length_batches([units[u] for u in chunk], pad_id, batch_tokens, encoder.device):
            with encoder.precision.autocast():
                encoder.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()


def sentence_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence around [start, end): from after the last '. ' or newline before it to the next one after it."""
    left = max(text.rfind(". ", 0, start), text.rfind("\n", 0, start))
    right_candidates = [i for i in (text.find(". ", end), text.find("\n", end)) if i != -1]
    return left + 1, (min(right_candidates) + 1) if right_candidates else len(text)


@torch.inference_mode()
def paper_way(encoder: LoadedEncoder, mentions: pl.DataFrame, name_layer: int, max_tokens: int) -> int:
    """Two batch-of-one forward passes per mention (sentence, then context); returns sub-words forwarded."""
    tokenizer, device = encoder.tokenizer, encoder.device
    forwarded = 0
    for context, start, end in mentions.select("context", "start", "end").iter_rows():
        first, last = sentence_bounds(context, start, end)
        sentence = tokenizer(
            context[first:last],
            return_offsets_mapping=True,
            truncation=True,
            max_length=max_tokens,
            return_tensors="pt",
        )
        offsets = sentence.pop("offset_mapping")[0].numpy()
        span_first, span_last = token_span(offsets[1:-1], start - first, end - first)
        with encoder.precision.autocast():
            low = encoder.model(**sentence.to(device), output_hidden_states=True).hidden_states[name_layer]
        low[0, 1 + span_first : 1 + span_last].amax(dim=0).float().cpu()
        window = tokenizer(context, truncation=True, max_length=max_tokens, return_tensors="pt")
        with encoder.precision.autocast():
            top = encoder.model(**window.to(device)).last_hidden_state
        top[0, 0].float().cpu()
        forwarded += sentence["input_ids"].shape[1] + window["input_ids"].shape[1]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return forwarded


def machine(encoder: LoadedEncoder) -> str:
    """The CPU's model name, its torch kernel capability and its bf16 flags (what `auto` reads)."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    bf16 = sorted(flag for flag in cpu_flags() if "bf16" in flag) or ["no bf16 flags"]
    return (
        f"{cpu} ({os.cpu_count()} CPUs, torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}, "
        f"{', '.join(bf16)}); {torch.get_num_threads()} torch threads; encoder on {encoder.device}"
    )


def encoder_at(encoder: LoadedEncoder, precision: str) -> LoadedEncoder | None:
    """`encoder` (loaded at fp32) made to run at `precision`, as `load_encoder` would; None where the
    precision cannot run on its device (int8 off a CPU)."""
    try:
        resolved = Precision.resolve(precision, encoder.device.type)
    except PipelineError:
        return None
    return dataclasses.replace(encoder, precision=resolved, model=resolved.apply(encoder.model))


def timed_encode(
    encoder: LoadedEncoder, mentions: pl.DataFrame, settings: EncoderConfig
) -> tuple[float, np.ndarray, np.ndarray]:
    """(seconds, context vectors, span vectors) of encode's own path over `mentions`: plan, chunked forward, chunk files."""
    no_entities = pl.DataFrame(schema={"kb_id": pl.String, "name": pl.String, "description": pl.String})
    started = time.perf_counter()
    plan = plan_units(mentions, no_entities, encoder, settings)
    with tempfile.TemporaryDirectory() as work_dir:
        context_vectors, span_vectors, _, _ = encode_in_chunks(encoder, plan.table, settings, Path(work_dir))
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, context_vectors, span_vectors


def row_cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine of each row of `vectors` (n, H) to the same row of `reference` (n, H)."""
    dots = (vectors * reference).sum(axis=1)
    return dots / np.maximum(np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)


def precision_table(
    encoder: LoadedEncoder,
    mentions: pl.DataFrame,
    settings: EncoderConfig,
    precisions: list[str],
    repeats: int,
    record_path: str | None = None,
) -> None:
    """Print encode's texts/s at each precision (best of `repeats`, precisions alternated), the ratio
    to fp32 and the cosine of every context and mention-string vector to its fp32 vector."""
    at = {name: encoder_at(encoder, name) for name in dict.fromkeys(["fp32", *precisions])}
    for name in [name for name, loaded in at.items() if loaded is None]:
        print(f"precision {name}: skipped, it does not run on {encoder.device.type}")
    at = {name: loaded for name, loaded in at.items() if loaded is not None}
    texts = len(
        plan_units(
            mentions,
            pl.DataFrame(schema={"kb_id": pl.String, "name": pl.String, "description": pl.String}),
            encoder,
            settings,
        ).table.units
    )
    best, vectors = {}, {}
    for name, loaded in at.items():  # warm-up, and the vectors compared
        _, *vectors[name] = timed_encode(loaded, mentions.head(max(mentions.height // 10, 1)), settings)
    for _ in range(repeats):
        for name, loaded in at.items():
            seconds, context_vectors, span_vectors = timed_encode(loaded, mentions, settings)
            best[name] = min(best.get(name, float("inf")), seconds)
            vectors[name] = (context_vectors, span_vectors)
    print(
        f"{texts} distinct texts for {mentions.height} mentions, max_context_tokens {settings.max_context_tokens}; "
        f"best of {repeats}, precisions alternated"
    )
    print(
        f"{'precision':<10} {'seconds':>8} {'texts/s':>8} {'vs fp32':>8} {'context cos mean/min':>21} "
        f"{'name cos mean/min':>18}"
    )
    for name, seconds in best.items():
        context = row_cosines(vectors[name][0], vectors["fp32"][0])
        spans = row_cosines(vectors[name][1], vectors["fp32"][1])
        print(
            f"{name:<10} {seconds:>8.2f} {texts / seconds:>8.1f} {best['fp32'] / seconds:>7.2f}x "
            f"{context.mean():>13.4f}/{context.min():.4f} {spans.mean():>11.4f}/{spans.min():.4f}"
        )
        for measure, value in (
            ("texts/s", texts / seconds),
            ("context cos to fp32", context.mean()),
            ("name cos to fp32", spans.mean()),
        ):
            record(record_path, "encode", name, measure, float(value))


def record(path: str | None, bench: str, precision: str, measure: str, value: float) -> None:
    """Append one figure as a JSON line to `path` (bench/gpu.sh's table reads them); nothing when None."""
    if path:
        with open(path, "a", encoding="utf-8") as lines:
            lines.write(json.dumps({"bench": bench, "precision": precision, "measure": measure, "value": value}) + "\n")


def method_table(encoder: LoadedEncoder, mentions: pl.DataFrame, settings: EncoderConfig, args) -> None:
    """Print (a) ours, (b) the ceiling and (c) the paper's way, side by side (see the module doc)."""
    no_entities = pl.DataFrame(schema={"kb_id": pl.String, "name": pl.String, "description": pl.String})
    started = time.perf_counter()
    plan = plan_units(mentions, no_entities, encoder, settings)
    planning = time.perf_counter() - started
    chunks = chunk_units(plan.table, settings.chunk_texts)
    # Warm-up on every tenth text, so neither timed run pays for first-call allocations.
    ceiling(encoder, plan.table.units, [chunk[::10] for chunk in chunks], settings.batch_tokens)

    # Alternated and best of --repeats: a shared machine's noise hits both alike.
    raw = ours = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        ceiling(encoder, plan.table.units, chunks, settings.batch_tokens)
        raw = min(raw, time.perf_counter() - started)
        ours = min(ours, timed_encode(encoder, mentions, settings)[0])

    sample = mentions.sample(min(args.paper_sample, mentions.height), seed=0)
    started = time.perf_counter()
    paper_tokens = paper_way(encoder, sample, settings.name_layer, settings.max_context_tokens)
    paper = time.perf_counter() - started

    rows = [
        ("ours (plan + encode + chunk files)", mentions.height, plan.sub_words, ours),
        ("ceiling (forward passes only)", mentions.height, plan.sub_words, raw),
        ("paper's way (2 passes/mention, batch 1)", sample.height, paper_tokens, paper),
    ]
    print(
        f"at {encoder.precision.name}: {len(plan.table.units)} distinct texts, {plan.sub_words} sub-words for "
        f"{mentions.height} mentions; planning alone {planning:.2f} s"
    )
    print(f"{'method':<42} {'mentions':>8} {'seconds':>8} {'mentions/s':>11} {'sub-words/s':>12}")
    for name, count, tokens, seconds in rows:
        print(f"{name:<42} {count:>8} {seconds:>8.2f} {count / seconds:>11.1f} {tokens / seconds:>12.0f}")
    ours_rate, raw_rate, paper_rate = (count / seconds for _, count, _, seconds in rows)
    print(f"ours / ceiling: {ours_rate / raw_rate:.2f} (mentions/s); ours / paper's way: {ours_rate / paper_rate:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="MEANTIME named mentions to encode (first by id).")
    parser.add_argument("--paper-sample", type=int, default=100, help="Mentions timed the paper's way.")
    parser.add_argument("--mbert-shaped", action="store_true", help="Random mBERT-shaped encoder instead of e5-small.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--chunk-texts", type=int, default=4096)
    parser.add_argument("--max-context-tokens", type=int, default=0, help="0: configs/meantime.toml's.")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--repeats", type=int, default=2, help="Best of this many runs of (a) and (b).")
    parser.add_argument(
        "--precisions", default="fp32,bf16,int8", help="Precisions compared (comma-separated; '' for none)."
    )
    parser.add_argument("--precisions-only", action="store_true", help="Only the precision table, not (a)-(c).")
    parser.add_argument(
        "--record", default=None, help="Append the precision table's figures as JSON lines to this file."
    )
    args = parser.parse_args()
    if not (MEANTIME / "mentions.jsonl").is_file():
        print(f"skipped: MEANTIME not found at {MEANTIME}")
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(ROOT / "configs" / "meantime.toml")
    settings = EncoderConfig(
        name=config.encoder.name,
        device=args.device,
        batch_tokens=args.batch_tokens,
        chunk_texts=args.chunk_texts,
        precision="fp32",
        max_context_tokens=args.max_context_tokens or config.encoder.max_context_tokens,
    )
    mentions = load_mentions(config.inputs).select("mention_id", "context", "start", "end").sort("mention_id")
    mentions = mentions.head(args.limit)
    encoder = mbert_shaped(pick_device(args.device)) if args.mbert_shaped else load_encoder(settings)
    encoder = encoder_at(encoder, "fp32")  # mbert_shaped runs at auto
    print(
        f"encoder: {encoder.name} ({encoder.num_layers} layers, hidden {encoder.hidden_size}); {machine(encoder)}; "
        f"{mentions.height} MEANTIME mentions"
    )
    if not args.precisions_only:
        method_table(encoder_at(encoder, "auto"), mentions, settings, args)
    precisions = [name.strip() for name in args.precisions.split(",") if name.strip()]
    if precisions:
        precision_table(encoder, mentions, settings, precisions, args.repeats, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
