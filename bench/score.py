"""Benchmark: our TAC KBP 2015 scorer against neleval 3.1.1 on a 30k-mention gold/system pair.

Generates a realistic pair (4 languages, ~1,000 documents, a few thousand KB entities with
a Zipf-like popularity, ~20% NIL in NIL clusters, and a system with random relinks, NIL
flips, NIL cluster merges/splits, type errors and lower-confidence duplicate rows),
writes both as `.tab` files, scores them with `pipeline.scoring.measures` and with neleval
(`prepare-tac15` + `evaluate`, in-process), checks every measure agrees to 1e-9 and
prints wall times and speed ratios.

    python bench/score.py [--mentions 30000] [--seed 0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import importlib
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.formats.tac import read_tab, write_tab  # noqa: E402
from pipeline.scoring.measures import MEASURES, MICRO_AVERAGE, score, score_files  # noqa: E402
from pipeline.scoring.table import format_table  # noqa: E402

LANGUAGES = ("en", "es", "it", "nl")
TOLERANCE = 1e-9


def _popularity(n: int, offset: int) -> np.ndarray:
    """Zipf-like probabilities 1/(rank + offset): a long tail, largest share a few percent."""
    weights = 1.0 / (np.arange(n) + offset)
    return weights / weights.sum()


def make_gold(n_mentions: int, seed: int) -> pl.DataFrame:
    """Gold mentions: spans never collide; 20% NIL in NIL clusters; Zipf-like cluster sizes."""
    rng = np.random.default_rng(seed)
    n_docs = max(n_mentions // 30, 4)
    n_entities = max(n_mentions // 10, 10)  # 3,000 KB entities for 30k mentions
    n_nil_clusters = max(n_mentions // 20, 2)  # 1,500 NIL clusters
    doc_index = rng.integers(0, n_docs, n_mentions)
    doc_numbers = np.arange(n_docs)
    documents = np.char.add(
        np.char.add("bench:", np.array(LANGUAGES)[doc_numbers % len(LANGUAGES)]),
        np.char.add(":doc", np.char.zfill(doc_numbers.astype(str), 5)),
    )
    entity = rng.choice(n_entities, n_mentions, p=_popularity(n_entities, offset=10))
    nil = rng.random(n_mentions) < 0.2
    nil_cluster = rng.choice(n_nil_clusters, n_mentions, p=_popularity(n_nil_clusters, offset=5))
    kb_id = np.where(
        nil,
        np.char.add("NIL", np.char.zfill(nil_cluster.astype(str), 5)),
        np.char.add("E", np.char.zfill(entity.astype(str), 7)),
    )
    slot = pl.DataFrame({"doc": doc_index}).select(pl.int_range(pl.len()).over("doc").alias("slot"))["slot"].to_numpy()
    start = slot * 40 + rng.integers(0, 10, n_mentions)
    return pl.DataFrame(
        {
            "run_id": "gold",
            "mention_id": np.char.add("m", np.arange(n_mentions).astype(str)),
            "mention": np.char.add("name", (entity % 997).astype(str)),
            "doc_id": documents[doc_index],
            "start": start,
            "end": start + rng.integers(0, 25, n_mentions),
            "kb_id": kb_id,
            "entity_type": np.array(["PER", "ORG", "GPE", "LOC", "FAC"])[entity % 5],
            "mention_type": np.where(rng.random(n_mentions) < 0.75, "NAM", "NOM"),
            "confidence": 1.0,
        }
    )


def make_system(gold: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Gold with random errors, plus 5% of spans given a second, lower-confidence row."""
    rng = np.random.default_rng(seed)
    n = gold.height
    kb_pool = gold.filter(~pl.col("kb_id").str.starts_with("NIL"))["kb_id"].unique().sort().to_numpy()
    nil_pool = gold.filter(pl.col("kb_id").str.starts_with("NIL"))["kb_id"].unique().sort().to_numpy()
    draw = rng.random((6, n))
    is_nil = pl.col("kb_id").str.starts_with("NIL")
    system = gold.with_columns(
        pl.Series("random_kb", kb_pool[rng.integers(0, len(kb_pool), n)]),
        pl.Series("random_nil", nil_pool[rng.integers(0, len(nil_pool), n)]),
        *(pl.Series(f"draw{i}", draw[i]) for i in range(len(draw))),  # independent uniform draws
    ).with_columns(
        pl.when(~is_nil & (pl.col("draw0") < 0.12))
        .then(pl.col("random_kb"))  # relink
        .when(~is_nil & (pl.col("draw1") < 0.06))
        .then(pl.format("NILs{}", pl.col("start") % 50))
        .when(is_nil & (pl.col("draw1") < 0.10))
        .then(pl.col("random_kb"))  # NIL -> KB
        .when(is_nil & (pl.col("draw2") < 0.10))
        .then(pl.col("random_nil"))  # merge
        .when(is_nil & (pl.col("draw3") < 0.10))
        .then(pl.format("{}b", pl.col("kb_id")))  # split
        .otherwise(pl.col("kb_id"))
        .alias("kb_id"),
        pl.when(pl.col("draw4") < 0.05).then(pl.lit("ORG")).otherwise(pl.col("entity_type")).alias("entity_type"),
        pl.Series("confidence", np.round(0.5 + rng.random(n) / 2, 4)),
        pl.lit("system").alias("run_id"),
    )
    duplicates = system.filter(pl.col("draw5") < 0.05).with_columns(
        pl.col("random_kb").alias("kb_id"), (pl.col("confidence") / 2).alias("confidence")
    )
    return pl.concat([system, duplicates]).select(gold.columns)


def import_neleval():
    """neleval's (PrepareTac15, Evaluate) behind the collections/cElementTree shim."""
    for name in ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable"):
        setattr(collections, name, getattr(collections.abc, name))
    try:
        importlib.import_module("xml.etree.cElementTree")
    except ImportError:
        sys.modules["xml.etree.cElementTree"] = importlib.import_module("xml.etree.ElementTree")
    from neleval.evaluate import Evaluate
    from neleval.tac import PrepareTac15

    return PrepareTac15, Evaluate


def run_neleval(gold_path: Path, system_path: Path, work: Path) -> tuple[dict, float, float]:
    """neleval results, prepare seconds, evaluate seconds."""
    PrepareTac15, Evaluate = import_neleval()
    started = time.perf_counter()
    prepared = {}
    for name, path in (("gold", gold_path), ("system", system_path)):
        with open(path, encoding="utf-8") as handle:
            prepared[name] = work / f"{name}.neleval"
            prepared[name].write_text(PrepareTac15(handle)() + "\n", encoding="utf-8")
    prepared_at = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = Evaluate(str(prepared["system"]), gold=str(prepared["gold"]), measures=list(MEASURES))()
    finished = time.perf_counter()
    return results, prepared_at - started, finished - prepared_at


def best_of(repeats: int, function, *args, **kwargs) -> tuple[object, float, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - started)
    return result, min(times), statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mentions", type=int, default=30_000, help="gold mentions to generate")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our scorer (best and median kept)")
    args = parser.parse_args()

    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, polars {pl.__version__}"
    )
    gold = make_gold(args.mentions, args.seed)
    system = make_system(gold, args.seed + 1)
    print(
        f"gold: {gold.height} mentions, {gold['kb_id'].n_unique()} ids, "
        f"{gold.filter(pl.col('kb_id').str.starts_with('NIL')).height} NIL; system: {system.height} rows"
    )

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        gold_path, system_path = work / "gold.tab", work / "system.tab"
        write_tab(gold, gold_path)
        write_tab(system, system_path)

        theirs, prepare_s, evaluate_s = run_neleval(gold_path, system_path, work)
        neleval_total = prepare_s + evaluate_s
        score_files(gold_path, system_path)  # warm-up (polars thread pool, regex compilation)
        report, files_best, files_median = best_of(args.repeats, score_files, gold_path, system_path)
        gold_frame, system_frame = read_tab(gold_path), read_tab(system_path)
        _, score_best, score_median = best_of(args.repeats, score, gold_frame, system_frame)

    worst = 0.0
    for measure in MEASURES:
        for ours_key, their_key in (("precision", "precision"), ("recall", "recall"), ("f1", "fscore")):
            worst = max(worst, abs(report["overall"][measure][ours_key] - theirs[measure][their_key]))
    worst = max(worst, abs(report["overall"][MICRO_AVERAGE]["micro_average"] - theirs["strong_all_match"]["recall"]))
    print(format_table(report))
    print(f"largest difference from neleval over {len(MEASURES) * 3 + 1} numbers: {worst:.2e}")
    print(f"neleval 3.1.1: prepare-tac15 {prepare_s:.3f} s + evaluate {evaluate_s:.3f} s = {neleval_total:.3f} s")
    print(
        f"ours, score_files (read both .tab + score): best {files_best * 1000:.1f} ms, "
        f"median {files_median * 1000:.1f} ms -> {neleval_total / files_best:.0f}x faster end to end"
    )
    print(
        f"ours, score (frames in memory):           best {score_best * 1000:.1f} ms, "
        f"median {score_median * 1000:.1f} ms -> {evaluate_s / score_best:.0f}x faster than neleval evaluate alone"
    )
    if worst > TOLERANCE:
        print(f"MISMATCH: difference {worst:.2e} exceeds {TOLERANCE}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
