"""A character n-gram index that shortlists fuzzy name matches among millions of names.

Triage's fuzzy index until tantivy's replaced it (`pipeline/candidates/tantivy_index.py`); kept here
as the baseline that `bench/triage_scale.py` measures the library against.

It indexes romanised keys (`textnorm.romanise`: lower-case `a-z`, `0-9` and spaces), so
a four-gram is a number below 37**4, and the index is one posting list per n-gram: the
sorted rows of the names holding it (CSR layout: `offsets`, `name_rows`). Trigrams are
cut for all names at once with numpy from the Arrow string buffer, never by a Python
loop over names.

A query looks names up by its `lookup_ngrams` rarest n-grams only. Rare n-grams have
short postings, so a lookup costs little whatever the KB size, while a name that is
close to the query shares most of them: one typo changes at most four of them.
Names sharing at least two looked-up n-grams (one for one-n-gram queries), most
shared first, are the shortlist that the caller rescores with a string similarity.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.core.io import atomic_path

logger = logging.getLogger(__name__)

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 "
# Four letters: over 5.8M names a trigram's posting is long (the rarest trigrams of a
# typical title still sit in thousands of names), a four-gram's short.
NGRAM_SIZE = 4
N_CODES = len(ALPHABET) ** NGRAM_SIZE  # 1,874,161
INDEX_FILE = "ngrams.npz"
# Queries per shortlist block: ~12k hits each at 5.8M names, so ~200 MB of keys a block.
QUERY_BLOCK = 2048

# Byte -> letter number; anything outside the alphabet counts as a space.
_LETTER = np.full(256, len(ALPHABET) - 1, dtype=np.int64)
_LETTER[np.frombuffer(ALPHABET.encode(), dtype=np.uint8)] = np.arange(len(ALPHABET))


def ngram_codes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(row, code) of every n-gram of every text padded with a space at each end, repeats
    included, in text order. Null texts count as empty."""
    padded = (" " + texts.fill_null("") + " ").to_arrow()
    padded = pa.concat_arrays(padded.chunks) if isinstance(padded, pa.ChunkedArray) else padded
    padded = padded.cast(pa.large_string())
    _, offsets_buffer, data_buffer = padded.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[padded.offset : padded.offset + len(padded) + 1]
    letters = (
        _LETTER[np.frombuffer(data_buffer, dtype=np.uint8)[: offsets[-1]]] if offsets[-1] else np.zeros(0, np.int64)
    )
    counts = np.maximum(np.diff(offsets) - (NGRAM_SIZE - 1), 0)  # n characters hold n - 3 four-grams
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.arange(counts.sum()) + np.repeat(offsets[:-1] - (np.cumsum(counts) - counts), counts)
    codes = np.zeros(len(starts), dtype=np.int64)
    for position in range(NGRAM_SIZE):
        codes = codes * len(ALPHABET) + letters[starts + position]
    return rows, codes


@dataclass(frozen=True)
class NgramIndex:
    """`name_rows[offsets[c]:offsets[c + 1]]` are the rows of the names holding n-gram c."""

    offsets: np.ndarray  # (N_CODES + 1,) int64
    name_rows: np.ndarray  # (postings,) int32
    n_names: int

    @classmethod
    def build(cls, names: pl.Series) -> NgramIndex:
        """Index romanised names; row i of the index is names[i]."""
        rows, codes = ngram_codes(names)
        # Rows, ascending already, stay ascending within a code under a stable sort, so
        # repeats end up adjacent.
        order = np.argsort(codes.astype(np.uint32), kind="stable")
        rows, codes = rows[order], codes[order]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = (rows[1:] != rows[:-1]) | (codes[1:] != codes[:-1])
        rows, codes = rows[first], codes[first]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=N_CODES))]).astype(np.int64)
        return cls(offsets, rows.astype(np.int32), len(names))

    def shortlist(self, texts: pl.Series, top_n: int, lookup_ngrams: int = 6) -> pl.DataFrame:
        """Up to `top_n` names per text sharing most of its rarest n-grams: columns query (row in
        `texts`), name (row in the indexed names), shared (n-grams in common).

        Blocks of `QUERY_BLOCK` texts run on a thread each (numpy's sorts and gathers release
        the GIL), which also bounds the hit arrays in memory."""
        starts = range(0, len(texts), QUERY_BLOCK)
        with ThreadPoolExecutor(max_workers=max(1, min(len(starts), os.cpu_count() or 1))) as pool:
            blocks = list(
                pool.map(
                    lambda start: self._shortlist_block(texts.slice(start, QUERY_BLOCK), top_n, lookup_ngrams, start),
                    starts,
                )
            )
        if not blocks:
            return pl.DataFrame(schema={"query": pl.Int64, "name": pl.Int64, "shared": pl.Int64})
        return pl.concat(blocks)

    def _shortlist_block(self, texts: pl.Series, top_n: int, lookup_ngrams: int, first_row: int) -> pl.DataFrame:
        rows, codes = ngram_codes(texts)
        rows, codes = np.divmod(np.unique(rows * N_CODES + codes), N_CODES)  # each n-gram of a query once
        postings = self.offsets[codes + 1] - self.offsets[codes]
        grams = (
            pl.DataFrame({"query": rows, "code": codes, "postings": postings})
            .filter(pl.col("postings") > 0)
            .filter(pl.col("postings").rank("ordinal").over("query") <= lookup_ngrams)
        )
        lengths = grams["postings"].to_numpy()
        starts = self.offsets[grams["code"].to_numpy()]
        positions = np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        n_names = max(self.n_names, 1)
        # One int64 key per (query, name) hit, sorted: equal keys are runs whose lengths are
        # the shared counts (a sort is several times cheaper than hashing tens of millions).
        keys = np.sort(np.repeat(grams["query"].to_numpy(), lengths) * n_names + self.name_rows[positions])
        run_starts = np.flatnonzero(np.diff(keys, prepend=-1))
        shared = np.diff(np.append(run_starts, len(keys)))
        query, name = np.divmod(keys[run_starts], n_names)
        looked_up = np.bincount(grams["query"].to_numpy(), minlength=len(texts))
        enough = shared >= np.minimum(2, looked_up[query])
        query, name, shared = query[enough], name[enough], shared[enough]
        # Most shared first, ties by name row, so the shortlist is the same on every run.
        order = np.lexsort((name, -shared, query))
        query, name, shared = query[order], name[order], shared[order]
        first_of_query = np.searchsorted(query, query)
        keep = np.arange(len(query)) - first_of_query < top_n
        return pl.DataFrame(
            {"query": query[keep] + first_row, "name": name[keep], "shared": shared[keep]},
            schema={"query": pl.Int64, "name": pl.Int64, "shared": pl.Int64},
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / INDEX_FILE) as temp_path:
            with open(temp_path, "wb") as handle:
                # Uncompressed: decompressing a large index costs more than reading it.
                np.savez(handle, offsets=self.offsets, name_rows=self.name_rows, n_names=self.n_names)

    @classmethod
    def load(cls, folder: Path) -> NgramIndex:
        with np.load(folder / INDEX_FILE) as saved:
            return cls(saved["offsets"], saved["name_rows"], int(saved["n_names"]))
