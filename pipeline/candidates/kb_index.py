"""The KB's name indexes for candidate generation, built once per KB and reused by later runs and links.

A multi-million-entity KB takes a minute to index and the index does not depend on the
mentions, so it lives in the store (`pipeline.core.store.kb_index_root`:
`$XEL_CACHE/kb-index/<KB fingerprint>/<key>/`), where the key hashes the KB file's
fingerprint and what the index is built with; triage and `xel-cli link` both read it. Triage
settings such as `k` or the mentions file can change without rebuilding it. Each index folder
is built under a temporary name, sealed (a record of every file's size and checksum,
`pipeline/core/checked_files.py`) and renamed into place, so a killed build is never taken as
finished; a folder that no longer matches its record is a miss, rebuilt with one `[W402]`
naming the file. A folder that matches is only read, so a read-only cache serves as it is; one
it lacks is built in a private temporary folder, deleted when the process ends, with one `[W404]`
saying that it is not cached (`pipeline.core.store.unwritable`).
Folders of other keys are left alone (another run or link may be reading them).

- `entities`: the KB file as `entities.parquet`; triage copies it into its own folder.
- `names`: every KB name and alias (`surfaces.parquet`: surface, kb_id and its keys)
  and a tantivy four-gram index over the content words of their distinct romanised keys
  (`tantivy/`; document i of the index = row i of `roman_keys.parquet`).
- `dense`: the configured encoder's vectors of the distinct surfaces and a FAISS
  inner-product index over them: exact (flat) up to `EXACT_DENSE_LIMIT` names, HNSW above.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from pipeline.candidates.tantivy_index import TantivyNameIndex
from pipeline.core import checked_files
from pipeline.core.errors import CacheError, InputError, warn
from pipeline.core.io import atomic_path, default_permissions, failed_writes, write_parquet_atomic
from pipeline.core.store import stand_in_folder, unwritable
from pipeline.core.textnorm import acronym, add_keys, content_words
from pipeline.formats.inputs import write_entities

logger = logging.getLogger(__name__)

# Raise when the keys (textnorm) or the index layout change: old indexes are then rebuilt.
# 2: folding keeps script letters (vowel signs, viramas); 3: the fuzzy index is tantivy's
# (was our own four-gram postings, ngrams.npz); 4: folding drops format characters (ZWNJ, ZWJ,
# soft hyphen ...) and tatweel instead of breaking words there; 5: each folder holds its record
# (checked_files); 6: folding makes Persian keheh/yeh and alef maksura Arabic kaf/yeh.
INDEX_VERSION = 6
# Above this many names the dense index is HNSW: exact search would cost O(names) per query.
EXACT_DENSE_LIMIT = 200_000
HNSW_NEIGHBOURS = 32
HNSW_SEARCH_DEPTH = 128


def surface_forms(entities: pl.DataFrame) -> pl.DataFrame:
    """(surface, kb_id) for every KB name and alias."""
    names = entities.select(pl.col("name").alias("surface"), "kb_id")
    aliases = entities.select("kb_id", pl.col("alias_texts").alias("surface")).explode("surface").drop_nulls()
    return pl.concat([names, aliases.select("surface", "kb_id")]).unique()


def keyed_surfaces(entities: pl.DataFrame) -> pl.DataFrame:
    """Surface forms with their fold, roman and acronym keys."""
    surfaces = add_keys(surface_forms(entities), "surface")
    # Sorted: `unique` order varies from run to run, and the table is saved with the index.
    return surfaces.with_columns(acronym(pl.col("surface_roman")).alias("surface_acronym")).sort("surface", "kb_id")


@dataclass(frozen=True)
class KbNames:
    surfaces: pl.DataFrame
    roman_keys: pl.Series
    ngrams: TantivyNameIndex


@dataclass(frozen=True)
class KbIndex:
    """One KB as candidate generation reads it: its name indexes (`names_index`), its ids, and the store
    folder and fingerprint its dense index is kept under (`dense_index`)."""

    names: KbNames
    known_ids: pl.DataFrame  # kb_id: every id of the KB
    root: Path
    fingerprint: str


def name_ngrams(roman_keys: pl.Series, folder: Path | None = None) -> TantivyNameIndex:
    """The four-gram index of romanised names, on their content words (as fuzzy matching
    scores them), written into `folder` or, when None, kept in memory."""
    return TantivyNameIndex.build(
        roman_keys.to_frame().select(content_words(pl.col(roman_keys.name))).to_series(), folder
    )


def index_key(kb_fingerprint: str, part: str, settings: dict) -> str:
    payload = json.dumps(
        {"version": INDEX_VERSION, "kb": kb_fingerprint, "part": part, "settings": settings}, sort_keys=True
    )
    return f"{part}-{hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()}"


def _cached(root: Path, key: str, build: Callable[[Path], None]) -> Path:
    """The folder `root/key`, built by `build(temp_folder)` when missing or damaged (W402); other keys' folders kept."""
    folder = root / key
    if folder.is_dir():
        problem = checked_files.damage(folder / checked_files.RECORD_NAME)
        if problem is None:
            logger.info("reusing KB index %s", folder)
            return folder
        warn(logger, "W402", detail=problem, entry=folder)
        _remove(folder)
    reason = unwritable(root)  # E406 for a full disk
    if reason is not None:  # a read-only cache: built for this process alone
        root = stand_in_folder(
            root,
            "xel-kb-index-",
            reason,
            "the KB indexes it lacks are built for this process alone and not cached (a later run or link builds them again)",
            "them",
        )
        folder = root / key
    try:
        temp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
    except OSError as exc:  # a full cache
        raise CacheError("E406", path=folder, detail=exc.strerror or str(exc)) from None
    try:
        with failed_writes(folder, temp):  # a full disk, as a library reports it: E406
            build(temp)
            checked_files.seal_folder(temp)
        try:
            default_permissions(temp)
            os.replace(temp, folder)
        except OSError:
            # A parallel process (a `link --shard` of a shared cache) put the same index in place first.
            if not folder.is_dir():
                raise
            return folder
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    # Folders of other keys stay: in a store that runs and links share, another setting or
    # xel version may be reading them at this moment (docs/caches.md says how to clear it).
    return folder


def _remove(folder: Path) -> None:
    """Move a damaged folder aside and delete it (a reader of it elsewhere keeps its open files)."""
    aside = folder.with_name(f".{folder.name}.damaged.{os.getpid()}.tmp")
    try:
        os.replace(folder, aside)
    except OSError:  # read-only: the rebuild below reports it (E406)
        return
    shutil.rmtree(aside, ignore_errors=True)


def kb_entities(kb_path: Path, root: Path, kb_fingerprint: str) -> Path:
    """The KB read into `entities.parquet` (streamed, checked record by record), once per KB file."""

    def build(folder: Path) -> None:
        if write_entities(kb_path, folder / "entities.parquet") == 0:
            raise InputError("E107", path=kb_path)

    return _cached(root, index_key(kb_fingerprint, "entities", {}), build) / "entities.parquet"


def names_index(entities: pl.DataFrame, root: Path, kb_fingerprint: str) -> KbNames:
    def build(folder: Path) -> None:
        surfaces = keyed_surfaces(entities)
        roman_keys = surfaces.select(pl.col("surface_roman").unique().sort()).filter(pl.col("surface_roman") != "")
        logger.info("indexing %d distinct names of %d surface forms", roman_keys.height, surfaces.height)
        name_ngrams(roman_keys["surface_roman"], folder)
        write_parquet_atomic(surfaces, folder / "surfaces.parquet")
        write_parquet_atomic(roman_keys, folder / "roman_keys.parquet")

    folder = _cached(root, index_key(kb_fingerprint, "names", {}), build)
    return KbNames(
        pl.read_parquet(folder / "surfaces.parquet"),
        pl.read_parquet(folder / "roman_keys.parquet")["surface_roman"],
        TantivyNameIndex.load(folder),
    )


@dataclass(frozen=True)
class DenseNames:
    surfaces: list[str]
    index: object  # faiss.Index over their unit vectors, row i = surfaces[i]

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows), each (queries, k); rows are -1 where fewer than k names exist."""
        return self.index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), min(k, len(self.surfaces)))


def dense_index(
    surfaces: list[str] | Callable[[], list[str]],
    embed: Callable[[list[str]], np.ndarray],
    root: Path,
    kb_fingerprint: str,
    settings: dict,
) -> DenseNames:
    """The FAISS index of `surfaces` (or of what the callable returns, called only to build it)."""
    import faiss

    def build(folder: Path) -> None:
        nonlocal surfaces
        surfaces = surfaces() if callable(surfaces) else surfaces
        vectors = np.ascontiguousarray(embed(surfaces), dtype=np.float32)
        if len(surfaces) <= EXACT_DENSE_LIMIT:
            index = faiss.IndexFlatIP(vectors.shape[1])
        else:
            index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.add(vectors)
        with atomic_path(folder / "names.faiss") as temp_path:
            try:
                faiss.write_index(index, str(temp_path))
            except RuntimeError as exc:  # faiss reports a failed write (disk full) this way
                raise OSError(errno.EIO, str(exc).splitlines()[0], str(temp_path)) from None
        write_parquet_atomic(pl.DataFrame({"surface": surfaces}), folder / "surfaces.parquet")

    folder = _cached(root, index_key(kb_fingerprint, "dense", settings), build)
    # `xel-cli link` asks once per chunk and a large index takes seconds to read: the last one read
    # is kept, by folder and file time (a rebuilt file is read again).
    memo_key = (folder, (folder / "names.faiss").stat().st_mtime_ns)
    if memo_key in _DENSE_LOADED:
        return _DENSE_LOADED[memo_key]
    index = faiss.read_index(str(folder / "names.faiss"))
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = HNSW_SEARCH_DEPTH
    _DENSE_LOADED.clear()  # one index held at a time
    _DENSE_LOADED[memo_key] = DenseNames(pl.read_parquet(folder / "surfaces.parquet")["surface"].to_list(), index)
    return _DENSE_LOADED[memo_key]


_DENSE_LOADED: dict[tuple[Path, int], DenseNames] = {}
