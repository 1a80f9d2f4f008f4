"""The fuzzy name shortlist on tantivy (a Rust search engine): BM25 over character four-grams.

Each romanised name, padded with a space at each end, is a tantivy document tokenised by
tantivy's n-gram tokenizer into its four-grams (the same four-grams as
`bench/ngram_index.py`'s `ngram_codes`), with its row as a fast field. A query looks up its
`lookup_ngrams` rarest four-grams (document frequency from the index) as one disjunction;
tantivy ranks the names holding any of them by BM25 (block-max WAND, so the long postings
of a name's common four-grams are mostly skipped) and returns the `top_n` best, which the
caller rescores with a string similarity. It replaced our own four-gram postings
(`bench/ngram_index.py`, kept as the baseline `bench/triage_scale.py` measures it against).

Indexed by one writer thread, so documents keep row order on every build and BM25 ties
fall the same way on every run; in a single segment (up to millions of names under the
writer's memory budget) a document's id is its row, so no fast-field read is needed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import tantivy

from pipeline.core.errors import CacheError, shown_path
from pipeline.core.io import write_failure
from pipeline.core.progress import progress

NGRAM_SIZE = 4
TOKENIZER = "ngram4"
INDEX_FOLDER = "tantivy"
# The writer's memory budget: 5.6M names fit in one segment under it.
WRITER_HEAP_BYTES = 1_500_000_000
# Names indexed, or strings looked up, between two progress updates.
PROGRESS_EVERY = 10_000

logger = logging.getLogger(__name__)


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    # Frequencies, no positions: BM25 needs the first, nothing here needs the second.
    builder.add_text_field("name", stored=False, tokenizer_name=TOKENIZER, index_option="freq")
    builder.add_unsigned_field("row", stored=False, indexed=False, fast=True)
    return builder.build()


def _register_tokenizer(index: tantivy.Index) -> None:
    # Tokenizers are not saved with an index; every opened index needs it again.
    index.register_tokenizer(
        TOKENIZER,
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.ngram(NGRAM_SIZE, NGRAM_SIZE, prefix_only=False)).build(),
    )


def padded_ngrams(text: str) -> set[str]:
    """The distinct four-grams of `text` padded with a space at each end."""
    padded = f" {text} "
    return {padded[start : start + NGRAM_SIZE] for start in range(len(padded) - NGRAM_SIZE + 1)}


@dataclass(frozen=True)
class TantivyNameIndex:
    """A tantivy index of names: document `row` = names[row]."""

    index: tantivy.Index
    n_names: int
    # A read-only index's private folder (see `load`), deleted with this object.
    private_folder: tempfile.TemporaryDirectory | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, names: pl.Series, folder: Path | None = None) -> TantivyNameIndex:
        """Index romanised names (nulls as empty) into `folder/tantivy/`, or in memory when
        `folder` is None (a small index built per run).

        Raises `CacheError` E406 when the folder cannot be written (a full disk): the caller
        builds into a temporary folder, so nothing half-written is ever taken as an index."""
        path = None if folder is None else folder / INDEX_FOLDER
        try:
            if path is not None:
                path.mkdir(parents=True, exist_ok=True)
            index = tantivy.Index(_schema(), path=None if path is None else str(path), reuse=False)
            _register_tokenizer(index)
            writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
            with progress(len(names), "triage: name index", "names", delay=2.0) as counter:
                for row, name in enumerate(names.fill_null("").to_list()):
                    document = tantivy.Document()
                    document.add_text("name", f" {name} ")
                    document.add_unsigned("row", row)
                    writer.add_document(document)
                    if row % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                        counter.update(PROGRESS_EVERY)
                counter.update(len(names) % PROGRESS_EVERY)
            writer.commit()
            writer.wait_merging_threads()
            index.reload()
        # tantivy reports a failed write (an io::Error in its writer thread) as ValueError.
        except (OSError, ValueError) as exc:
            if path is None and isinstance(exc, ValueError):
                raise
            detail = write_failure(exc, path) or str(exc).splitlines()[0]
            raise CacheError("E406", path=shown_path(path), detail=detail) from None
        return cls(index, len(names))

    @staticmethod
    def _search(
        searcher, schema, one_segment: bool, grams: list[str], frequency: dict[str, int], top_n: int, lookup_ngrams: int
    ) -> list[int]:
        """Rows of the `top_n` names BM25 ranks first for one text's `lookup_ngrams` rarest four-grams."""
        rare = sorted((frequency[gram], gram) for gram in grams if frequency[gram] > 0)[:lookup_ngrams]
        if not rare:
            return []
        search = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Should, tantivy.Query.term_query(schema, "name", gram, index_option="freq"))
                for _, gram in rare
            ]
        )
        hits = searcher.search(search, limit=top_n, count=False).hits
        if one_segment:
            return [address.doc for _, address in hits]
        return searcher.fast_field_values("row", [address for _, address in hits])

    @classmethod
    def load(cls, folder: Path) -> TantivyNameIndex:
        """The index `build` wrote into `folder` (memory-mapped: loading reads nothing yet).

        tantivy takes a lock file in the index folder to open it, which a read-only folder (a
        shared cache, a read-only mount) refuses; the index is then opened through a private
        folder of links to its files, where tantivy makes its own lock files.
        """
        path, private_folder = folder / INDEX_FOLDER, None
        try:
            index = tantivy.Index.open(str(path))
        except ValueError as exc:
            if "Lockfile" not in str(exc):
                raise
            private_folder = tempfile.TemporaryDirectory(prefix="xel-tantivy-")
            for file in path.iterdir():
                if not file.name.endswith(".lock"):
                    os.symlink(file.resolve(), Path(private_folder.name) / file.name)
            logger.info("%s cannot be written: opening it through links in %s", path, private_folder.name)
            index = tantivy.Index.open(private_folder.name)
        _register_tokenizer(index)
        return cls(index, index.searcher().num_docs, private_folder)

    def shortlist(self, texts: pl.Series, top_n: int, lookup_ngrams: int = 6) -> pl.DataFrame:
        """Up to `top_n` names per text by BM25 over its `lookup_ngrams` rarest four-grams:
        columns query (row in `texts`), name (row in the indexed names), rank (0 = best)."""
        searcher = self.index.searcher()
        schema = self.index.schema
        one_segment = searcher.num_segments == 1
        texts_ngrams = [padded_ngrams(text or "") for text in texts.to_list()]
        # One document-frequency look-up per distinct four-gram of the whole batch.
        frequency = {gram: searcher.doc_freq("name", gram) for gram in set().union(*texts_ngrams)}
        queries, names = [], []
        with progress(len(texts_ngrams), "triage: fuzzy look-ups", "strings", delay=2.0) as counter:
            for query, grams in enumerate(texts_ngrams):
                if query % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                    counter.update(PROGRESS_EVERY)
                rows = self._search(searcher, schema, one_segment, grams, frequency, top_n, lookup_ngrams)
                queries.extend([query] * len(rows))
                names.extend(rows)
            counter.update(len(texts_ngrams) % PROGRESS_EVERY)
        query_rows = np.asarray(queries, dtype=np.int64)
        rank = np.arange(len(query_rows)) - np.searchsorted(query_rows, query_rows)
        return pl.DataFrame(
            {"query": query_rows, "name": np.asarray(names, dtype=np.int64), "rank": rank},
            schema={"query": pl.Int64, "name": pl.Int64, "rank": pl.Int64},
        )
