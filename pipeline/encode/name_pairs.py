"""§7.1 name pairs: the name vector of every distinct name of `[train] name_pairs`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import polars as pl

from pipeline.core.config import RunConfig
from pipeline.core.errors import CacheError, SchemaError
from pipeline.encoders.chunks import encode_in_chunks
from pipeline.encoders.encoder import load_encoder
from pipeline.encoders.plan import UnitTable, plan_names
from pipeline.formats.vectors import (
    NAME_PAIRS,
    name_pairs_key,
    read_name_pair_vectors,
    vector_attributes,
    write_name_pair_vectors,
)

logger = logging.getLogger(__name__)


def embed_name_pairs(config: RunConfig, out_dir: Path, key: str, force: bool, pairs: pl.DataFrame) -> int:
    """Name vectors of every distinct name in `[train] name_pairs` (§7.1) into name_pairs.h5.

    Each name is encoded alone and max-pooled over hidden layer `name_layer`, exactly as
    entity names are (`plan_names`), so the ranker's name MLP sees the pairs as it sees
    (mention string, entity name). A file of its own, keyed by this encode and the pairs
    file, so a new pairs file re-encodes only the names, and vectors.h5 never depends on
    it. `pairs` is the file as `read_name_pairs` gives it. Returns how many names were
    encoded (0: up to date).
    """
    pairs_path = config.train.name_pairs
    pairs_key = name_pairs_key(key, pairs_path)
    target = out_dir / NAME_PAIRS
    if not force and target.is_file():
        try:
            read_name_pair_vectors(target, pairs_key)
            return 0
        except (CacheError, SchemaError):
            pass  # stale or damaged: encode again
    names = pl.concat([pairs["foreign"], pairs["english"]]).unique().sort().to_list()
    encoder = load_encoder(config.encoder)
    table = UnitTable()
    span_rows = plan_names(names, encoder, table, config.encoder.max_name_tokens)
    logger.info("encoding %d distinct names of %d name pairs (%s)", len(names), pairs.height, pairs_path)
    work_dir = (
        out_dir / f"work-{key}-name-pairs-{pairs_key}"
    )  # starts with work-<key>: kept while this encode is current
    if force:
        shutil.rmtree(work_dir, ignore_errors=True)
    _, span_vectors, _, _ = encode_in_chunks(encoder, table, config.encoder, work_dir)
    attributes = {
        **vector_attributes(encoder, config, pairs_key),
        "name_pairs": str(pairs_path),
        "content": "/names: every distinct foreign and English name of the pairs file, name vector only",
    }
    write_name_pair_vectors(target, attributes, config.encoder.store_float16, names, span_vectors[span_rows])
    shutil.rmtree(work_dir, ignore_errors=True)
    return len(names)
