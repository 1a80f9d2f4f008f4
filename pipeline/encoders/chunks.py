"""Resumable encoding: the plan's units in chunks, each finished chunk saved as a file.

Chunks are cut from the plan alone (units sorted by length), so a rerun after a kill cuts
the same chunks, checks every saved one and encodes only those without a whole, matching file.
A saved chunk is keyed by its content (`chunk_key`: the encoder, the settings that change its
vectors, and each unit's index, sub-words and spans), so a rerun whose texts changed never takes
vectors of other texts that happen to sit at the same unit indices: that chunk is encoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from pipeline.core import checked_files
from pipeline.core.config import EncoderConfig
from pipeline.core.errors import warn
from pipeline.core.io import atomic_path
from pipeline.core.progress import progress as progress_counter
from pipeline.encoders.encoder import LoadedEncoder, forward_units
from pipeline.encoders.plan import UnitTable

logger = logging.getLogger(__name__)


def chunk_units(table: UnitTable, chunk_texts: int) -> list[np.ndarray]:
    """Unit indices of each chunk: every unit once, sorted by length (stable), cut every `chunk_texts`.

    A function of the plan alone, so a resumed run cuts the same chunks; batches are
    formed within a chunk, so their composition does not depend on where a run resumed.
    """
    lengths = np.fromiter((len(unit) for unit in table.units), dtype=np.int64, count=len(table.units))
    order = np.argsort(lengths, kind="stable")
    return [order[first : first + chunk_texts] for first in range(0, len(order), chunk_texts)]


# Raise when what a saved chunk holds, or what its key hashes, changes: older chunks are then redone.
CHUNK_VERSION = 2  # 2: keyed by content (`chunk_key`), was by unit indices and batch_tokens


def chunk_key(encoder: LoadedEncoder, table: UnitTable, units: np.ndarray, name_layer: int, batch_tokens: int) -> str:
    """Content hash of one chunk: the encoder's identity (weights and precision), `name_layer` and
    `batch_tokens` (which change its vectors), and for each unit in `units` its index, its token ids and
    its spans (output row, first and last sub-word), so equal keys mean equal vectors in the same rows."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((CHUNK_VERSION, encoder.identity, int(name_layer), int(batch_tokens))).encode())
    for unit in units:
        tokens = np.asarray(table.units[unit], dtype=np.int64)
        spans = np.asarray(table.spans[unit], dtype=np.int64).reshape(-1, 3)
        digest.update(np.asarray([unit, len(tokens), len(spans)], dtype=np.int64).tobytes())
        digest.update(tokens.tobytes())
        digest.update(spans.tobytes())
    return digest.hexdigest()


def encode_chunk(
    encoder: LoadedEncoder, table: UnitTable, units: np.ndarray, name_layer: int, batch_tokens: int, progress=None
) -> dict[str, np.ndarray]:
    """One chunk's vectors: `units` (n,) with `context` (n, H), and `span_rows` (m,) with `span` (m, H),
    and its `key` (`chunk_key`).

    `span_rows` are the plan's output rows of the chunk's spans, so chunks can be put
    together in any order.
    """
    local_spans: list[list[tuple[int, int, int]]] = []
    span_rows: list[int] = []
    for unit in units:
        entries = table.spans[unit]
        local_spans.append([(len(span_rows) + j, first, last) for j, (_, first, last) in enumerate(entries)])
        span_rows.extend(row for row, _, _ in entries)
    context, span = forward_units(
        encoder, [table.units[u] for u in units], local_spans, name_layer, batch_tokens, progress
    )
    return {
        "units": units,
        "context": context,
        "span_rows": np.asarray(span_rows, dtype=np.int64),
        "span": span,
        "key": np.str_(chunk_key(encoder, table, units, name_layer, batch_tokens)),
    }


def save_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a chunk so that the file exists only when whole and durable (temporary name, fsync, rename).

    A kill at any moment leaves either the complete chunk or no file at all.
    """
    with atomic_path(path) as temp_path:
        with open(temp_path, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())


def finished_chunk(path: Path, key: str) -> bool:
    """Whether `path` holds exactly the chunk of content key `key` (`chunk_key`), else it is redone.

    A chunk that cannot be read whole (a member's CRC-32 fails, a file cut short) or holds a NaN
    or infinite vector is damaged: redone, with one `[W403]` naming it.
    """
    if not path.is_file():
        return False
    problem = checked_files.npz_damage(path)
    if problem is not None:
        warn(logger, "W403", detail=problem, path=path)
        return False
    try:
        with np.load(path) as saved:
            return str(saved["key"]) == key
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False


def encode_in_chunks(
    encoder: LoadedEncoder, table: UnitTable, settings: EncoderConfig, work_dir: Path
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(context vectors (n_units, H), span vectors (n_span_rows, H), chunks, chunks resumed), float32.

    Each finished chunk is a file in `work_dir`. A rerun checks every saved chunk (one `[W403]`
    for each damaged one, `finished_chunk`), reuses each whole, matching one and encodes the rest;
    "chunks resumed" counts those reused.
    """
    chunks = chunk_units(table, settings.chunk_texts)
    paths = [work_dir / f"chunk-{index:06d}.npz" for index in range(len(chunks))]
    work_dir.mkdir(parents=True, exist_ok=True)
    todo = [
        index
        for index, (path, units) in enumerate(zip(paths, chunks))
        if not finished_chunk(path, chunk_key(encoder, table, units, settings.name_layer, settings.batch_tokens))
    ]
    resumed = len(chunks) - len(todo)
    done_texts = int(sum(len(chunk) for index, chunk in enumerate(chunks) if index not in set(todo)))
    if resumed:
        logger.info(
            "resuming encode: %d of %d chunks (%d of %d texts) already encoded in %s",
            resumed,
            len(chunks),
            done_texts,
            len(table.units),
            work_dir,
        )
    with progress_counter(len(table.units), "encode", "texts", initial=done_texts) as progress:
        for index in todo:
            save_chunk(
                paths[index],
                encode_chunk(encoder, table, chunks[index], settings.name_layer, settings.batch_tokens, progress),
            )
    context_vectors = np.zeros((len(table.units), encoder.hidden_size), dtype=np.float32)
    span_vectors = np.zeros((sum(len(spans) for spans in table.spans), encoder.hidden_size), dtype=np.float32)
    for path in paths:
        with np.load(path) as saved:
            context_vectors[saved["units"]] = saved["context"]
            span_vectors[saved["span_rows"]] = saved["span"]
    return context_vectors, span_vectors, len(chunks), resumed
