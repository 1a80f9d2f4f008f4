"""One fuzzy name index in a process of its own: build it, run triage's fuzzy source, report.

    python bench/fuzzy_backends.py --backend tantivy --names-dir DIR --queries Q.parquet --out R.json

`bench/triage_scale.py` runs this once per backend so that each one's peak RSS is its own
(names loaded + index built + queries), side by side on the same names and queries:

- `ngram`: our own four-gram postings (`bench/ngram_index.py`, triage's index before tantivy);
- `tantivy`: BM25 over four-grams in tantivy (`pipeline/candidates/tantivy_index.py`);
- `bm25s`: BM25 over the same four-grams in bm25s (scipy sparse matrix, numpy backend).

Every backend gets the same query: the text's 6 rarest four-grams, and returns up to 128
names per distinct mention string, which rapidfuzz WRatio rescores (`fuzzy_candidates`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ngram_index import N_CODES, NgramIndex, ngram_codes  # noqa: E402


class Bm25sNameIndex:
    """bm25s over the names' four-grams (token id = four-gram code, as `ngram_codes` cuts them)."""

    def __init__(self, names: pl.Series) -> None:
        import bm25s

        # Token ids given, not text: bm25s's own tokenizer splits words, and the four-grams
        # must be the ones the other indexes see.
        rows, codes = ngram_codes(names)
        self.vocabulary, token_ids = np.unique(codes, return_inverse=True)
        bounds = np.searchsorted(rows, np.arange(len(names) + 1))
        documents = [token_ids[start:end] for start, end in zip(bounds[:-1], bounds[1:])]
        self.model = bm25s.BM25()
        self.model.scores = self.model.build_index_from_ids(
            list(range(len(self.vocabulary))), documents, show_progress=False
        )
        self.token_of_code = np.full(N_CODES, -1, dtype=np.int64)
        self.token_of_code[self.vocabulary] = np.arange(len(self.vocabulary))
        self.document_frequency = np.bincount(
            np.unique(rows * len(self.vocabulary) + token_ids) % len(self.vocabulary), minlength=len(self.vocabulary)
        )

    def shortlist(self, texts: pl.Series, top_n: int, lookup_ngrams: int = 6) -> pl.DataFrame:
        rows, codes = ngram_codes(texts)
        tokens = self.token_of_code[codes]
        queries, names = [], []
        bounds = np.searchsorted(rows, np.arange(len(texts) + 1))
        for query in range(len(texts)):
            own = np.unique(tokens[bounds[query] : bounds[query + 1]])
            own = own[own >= 0]
            if not len(own):
                continue
            rare = own[np.argsort(self.document_frequency[own], kind="stable")[:lookup_ngrams]]
            scores = self.model.get_scores_from_ids(rare.tolist())
            top = np.argpartition(-scores, top_n)[:top_n] if len(scores) > top_n else np.arange(len(scores))
            top = top[scores[top] > 0]
            queries.extend([query] * len(top))
            names.extend(top.tolist())
        return pl.DataFrame({"query": queries, "name": names}, schema={"query": pl.Int64, "name": pl.Int64})


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: on a shared machine it moves less than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_backend(backend: str, content_keys: pl.Series, folder: Path):
    if backend == "ngram":
        return NgramIndex.build(content_keys)
    if backend == "tantivy":
        from pipeline.candidates.tantivy_index import TantivyNameIndex

        return TantivyNameIndex.build(content_keys, folder)
    if backend == "bm25s":
        return Bm25sNameIndex(content_keys)
    raise SystemExit(f"unknown backend {backend!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, choices=["ngram", "tantivy", "bm25s"])
    parser.add_argument("--names-dir", type=Path, required=True, help="a names-<key>/ folder of the KB index")
    parser.add_argument(
        "--queries", type=Path, required=True, help="Parquet: mention_id, mention, kind (meantime|typo), gold_kb_id"
    )
    parser.add_argument("--scratch", type=Path, required=True, help="an empty folder for an on-disk index")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from pipeline.candidates.sources import fuzzy_candidates
    from pipeline.core.textnorm import add_keys, content_words

    surfaces = pl.read_parquet(args.names_dir / "surfaces.parquet")
    roman_keys = pl.read_parquet(args.names_dir / "roman_keys.parquet")["surface_roman"]
    queries = pl.read_parquet(args.queries)
    frame = add_keys(queries, "mention")
    loaded_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    started = time.perf_counter()
    content_keys = roman_keys.to_frame().select(content_words(pl.col(roman_keys.name))).to_series()
    index = build_backend(args.backend, content_keys, args.scratch)
    build_seconds = time.perf_counter() - started

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    found = fuzzy_candidates(frame, surfaces, roman_keys, index, k=10, min_score=70.0)
    fuzzy_seconds, fuzzy_cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started

    found_gold = found.select("mention_id", pl.col("kb_id").alias("gold_kb_id"), pl.lit(True).alias("hit"))
    recall = (
        frame.filter(pl.col("gold_kb_id").is_not_null())
        .join(found_gold, on=["mention_id", "gold_kb_id"], how="left")
        .group_by("kind")
        .agg(pl.col("hit").fill_null(False).mean().alias("recall"), pl.len().alias("n"))
    )
    result = {
        "backend": args.backend,
        "names": len(roman_keys),
        "mentions": frame.height,
        "distinct": frame["mention_roman"].n_unique(),
        "build_seconds": build_seconds,
        "fuzzy_seconds": fuzzy_seconds,
        "fuzzy_cpu_seconds": fuzzy_cpu_seconds,
        "loaded_gb": loaded_gb,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "recall": {row["kind"]: {"recall": row["recall"], "n": row["n"]} for row in recall.to_dicts()},
    }
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
