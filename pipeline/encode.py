"""encode: the paper's four vectors (§3.1) for every mention and every needed entity.

- mention string: max-pool over the mention's sub-words of hidden layer `name_layer`,
  from the encoder run over the mention's context;
- mention context: top-layer first token over up to `max_context_tokens` sub-words of
  the context with the mention centred (a context that fits is encoded whole, once,
  for all the mentions in it);
- entity name: the same max-pool over the name encoded alone;
- entity context: top-layer first token over the first sub-words of the description
  (the name when there is none).
Identical token sequences are encoded once. Output: `vectors.h5` with
`/mentions/{id,name,context}` and `/entities/{id,name,context}`, rows keyed by id.

Distinct texts are encoded in chunks (sorted by length, batched within the chunk); each
finished chunk is a file, so a killed run resumes after its last complete chunk. Shards
(`--shard i/n`) encode contiguous slices of the id-sorted mentions and entities into
their own files, which `--merge` joins into the one vectors.h5.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import polars as pl

from pipeline import schema
from pipeline.config import EncoderConfig, RunConfig, to_dict
from pipeline.encoder import (LoadedEncoder, encoder_identity, forward_units, load_encoder, mention_window,
                              resolve_encoder_path, token_span)
from pipeline.errors import CacheError, ConfigError, SchemaError
from pipeline.io import atomic_path, collect_checked, scan_parquet_checked, write_json_atomic
from pipeline.vectors import (NAME_PAIRS, VECTORS, name_pairs_key, read_name_pair_vectors, read_vectors,
                              write_name_pair_vectors, write_vectors)
from pipeline.progress import progress as progress_counter
from pipeline.stage import (StageResult, invalidate, is_up_to_date, library_versions, read_manifest_file, stage_key,
                            upstream_key, write_manifest)

logger = logging.getLogger(__name__)

STAGE = "encode"
STAGE_VERSION = 1
SHARDS = "shards"


class UnitTable:
    """Distinct token sequences to encode, with the span rows each one serves."""

    def __init__(self) -> None:
        self.units: list[np.ndarray] = []
        self.spans: list[list[tuple[int, int, int]]] = []
        self._index: dict[bytes, int] = {}

    def add(self, token_ids: np.ndarray) -> int:
        key = token_ids.tobytes()
        index = self._index.get(key)
        if index is None:
            index = len(self.units)
            self._index[key] = index
            self.units.append(token_ids)
            self.spans.append([])
        return index


def _special_prefix(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer puts before and after a single sequence ([CLS] ... [SEP])."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("x", add_special_tokens=True)["input_ids"]
    cut = next(i for i in range(len(wrapped)) if wrapped[i:i + len(bare)] == bare)
    return wrapped[:cut], wrapped[cut + len(bare):]


def plan_mentions(mentions: pl.DataFrame, encoder: LoadedEncoder, table: UnitTable, max_tokens: int,
                  first_span_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Add every mention's unit; returns (unit index per mention, span row per mention)."""
    if mentions.height == 0:  # a shard may hold none; tokenizers refuse an empty batch
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    prefix, suffix = _special_prefix(encoder.tokenizer)
    body = max_tokens - len(prefix) - len(suffix)
    contexts = mentions["context"].unique(maintain_order=True)
    encoded = encoder.tokenizer(contexts.to_list(), add_special_tokens=False, return_offsets_mapping=True)
    context_row = dict(zip(contexts.to_list(), range(len(contexts))))
    unit_of_mention = np.zeros(mentions.height, dtype=np.int64)
    span_row = np.arange(first_span_row, first_span_row + mentions.height)
    token_ids = [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]]
    offsets = [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in encoded["offset_mapping"]]
    for row, (context, start, end) in enumerate(mentions.select("context", "start", "end").iter_rows()):
        index = context_row[context]
        ids = token_ids[index]
        if len(ids) == 0:  # a context the tokenizer drops whole (zero-width characters): [UNK], as for names
            ids = np.asarray([encoder.tokenizer.unk_token_id], dtype=np.int64)
        first, last = token_span(offsets[index], start, end)
        window_start, first, last = mention_window(len(ids), first, last, body)
        window = ids[window_start: window_start + body]
        unit = table.add(np.concatenate([prefix, window, suffix]).astype(np.int64))
        table.spans[unit].append((int(span_row[row]), first + len(prefix), last + len(prefix)))
        unit_of_mention[row] = unit
    return unit_of_mention, span_row


def plan_entities(entities: pl.DataFrame, encoder: LoadedEncoder, table: UnitTable, max_context_tokens: int,
                  max_name_tokens: int, first_span_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Add each entity's name unit (span = all its sub-words) and description unit."""
    if entities.height == 0:  # a shard may hold none; tokenizers refuse an empty batch
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    prefix, suffix = _special_prefix(encoder.tokenizer)
    tokenizer = encoder.tokenizer
    names = entities["name"].to_list()
    texts = entities.select(pl.coalesce(pl.col("description").replace("", None), "name"))["description"].to_list()
    name_ids = tokenizer(names, add_special_tokens=False, truncation=True, max_length=max_name_tokens - len(prefix) - len(suffix))["input_ids"]
    text_ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_context_tokens - len(prefix) - len(suffix))["input_ids"]
    context_unit = np.zeros(entities.height, dtype=np.int64)
    span_row = np.arange(first_span_row, first_span_row + entities.height)
    for row, (ids, description_ids) in enumerate(zip(name_ids, text_ids)):
        ids = _add_name_unit(table, ids, prefix, suffix, tokenizer.unk_token_id, int(span_row[row]))
        context_unit[row] = table.add(np.asarray(prefix + (description_ids or ids) + suffix, dtype=np.int64))
    return context_unit, span_row


def _add_name_unit(table: UnitTable, ids: list[int], prefix: list[int], suffix: list[int], unk_id: int,
                   span_row: int) -> list[int]:
    """A name encoded alone, its span all of its sub-words; the ids used (an empty name is [UNK])."""
    ids = ids or [unk_id]
    unit = table.add(np.asarray(prefix + ids + suffix, dtype=np.int64))
    table.spans[unit].append((span_row, len(prefix), len(prefix) + len(ids)))
    return ids


def plan_names(names: list[str], encoder: LoadedEncoder, table: UnitTable, max_name_tokens: int) -> np.ndarray:
    """Add a name unit per name exactly as `plan_entities` does for entity names; their span rows (0..n-1)."""
    if not names:
        return np.zeros(0, dtype=np.int64)
    prefix, suffix = _special_prefix(encoder.tokenizer)
    tokenizer = encoder.tokenizer
    name_ids = tokenizer(names, add_special_tokens=False, truncation=True,
                         max_length=max_name_tokens - len(prefix) - len(suffix))["input_ids"]
    for row, ids in enumerate(name_ids):
        _add_name_unit(table, ids, prefix, suffix, tokenizer.unk_token_id, row)
    return np.arange(len(names))


def entities_to_encode(entities: pl.LazyFrame, candidates: pl.LazyFrame, mentions: pl.LazyFrame, everything: bool) -> pl.LazyFrame:
    """Entities that appear as a candidate or a gold link (all of them if asked), by kb_id."""

    if everything:
        return entities.sort("kb_id")
    needed = pl.concat([
        candidates.select("kb_id"),
        mentions.select(pl.col("gold_kb_id").alias("kb_id")).filter(schema.linked_gold("kb_id")),
    ]).unique()
    return entities.join(needed, on="kb_id", how="semi").sort("kb_id")


@dataclass
class Plan:
    """Everything to encode: the distinct units, and which unit / span row serves each id.

    Context vector of mention i = context_vectors[mention_units[i]], its name vector =
    span_vectors[mention_span_rows[i]]; the same for entities.
    """

    table: UnitTable
    mention_units: np.ndarray
    mention_span_rows: np.ndarray
    entity_units: np.ndarray
    entity_span_rows: np.ndarray

    @property
    def sub_words(self) -> int:
        return int(sum(len(unit) for unit in self.table.units))


def plan_units(mentions: pl.DataFrame, entities: pl.DataFrame, encoder: LoadedEncoder, settings: EncoderConfig) -> Plan:
    """Tokenise mentions (`mention_id, context, start, end`) and entities (`kb_id, name, description`) into units."""
    table = UnitTable()
    mention_units, mention_span_rows = plan_mentions(mentions, encoder, table, settings.max_context_tokens, 0)
    entity_units, entity_span_rows = plan_entities(entities, encoder, table, settings.max_context_tokens,
                                                   settings.max_name_tokens, mentions.height)
    return Plan(table, mention_units, mention_span_rows, entity_units, entity_span_rows)


def chunk_units(table: UnitTable, chunk_texts: int) -> list[np.ndarray]:
    """Unit indices of each chunk: every unit once, sorted by length (stable), cut every `chunk_texts`.

    A function of the plan alone, so a resumed run cuts the same chunks; batches are
    formed within a chunk, so their composition does not depend on where a run resumed.
    """
    lengths = np.fromiter((len(unit) for unit in table.units), dtype=np.int64, count=len(table.units))
    order = np.argsort(lengths, kind="stable")
    return [order[first:first + chunk_texts] for first in range(0, len(order), chunk_texts)]


def encode_chunk(encoder: LoadedEncoder, table: UnitTable, units: np.ndarray, name_layer: int, batch_tokens: int,
                 progress=None) -> dict[str, np.ndarray]:
    """One chunk's vectors: `units` (n,) with `context` (n, H), and `span_rows` (m,) with `span` (m, H).

    `span_rows` are the plan's output rows of the chunk's spans, so chunks can be put
    together in any order.
    """
    local_spans: list[list[tuple[int, int, int]]] = []
    span_rows: list[int] = []
    for unit in units:
        entries = table.spans[unit]
        local_spans.append([(len(span_rows) + j, first, last) for j, (_, first, last) in enumerate(entries)])
        span_rows.extend(row for row, _, _ in entries)
    context, span = forward_units(encoder, [table.units[u] for u in units], local_spans, name_layer, batch_tokens,
                                  progress)
    return {"units": units, "context": context, "span_rows": np.asarray(span_rows, dtype=np.int64), "span": span,
            "batch_tokens": np.int64(batch_tokens)}


def save_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a chunk so that the file exists only when whole and durable (temporary name, fsync, rename).

    A kill at any moment leaves either the complete chunk or no file at all.
    """
    with atomic_path(path) as temp_path:
        with open(temp_path, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())


def finished_chunk(path: Path, units: np.ndarray, batch_tokens: int) -> bool:
    """Whether `path` holds exactly this chunk, batched the same way (else it is redone)."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as saved:
            return np.array_equal(saved["units"], units) and int(saved["batch_tokens"]) == batch_tokens
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False


def encode_in_chunks(encoder: LoadedEncoder, table: UnitTable, settings: EncoderConfig,
                     work_dir: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(context vectors (n_units, H), span vectors (n_span_rows, H), chunks, chunks resumed), float32.

    Each finished chunk is a file in `work_dir`. Chunks are done in order, so a rerun
    resumes at the first chunk without a matching file and recomputes none before it.
    """
    chunks = chunk_units(table, settings.chunk_texts)
    paths = [work_dir / f"chunk-{index:06d}.npz" for index in range(len(chunks))]
    work_dir.mkdir(parents=True, exist_ok=True)
    resumed = 0
    while resumed < len(chunks) and finished_chunk(paths[resumed], chunks[resumed], settings.batch_tokens):
        resumed += 1
    done_texts = int(sum(len(chunk) for chunk in chunks[:resumed]))
    if resumed:
        logger.info("resuming encode at chunk %d/%d (%d of %d texts already encoded in %s)",
                    resumed, len(chunks), done_texts, len(table.units), work_dir)
    with progress_counter(len(table.units), "encode", "texts", initial=done_texts) as progress:
        for index in range(resumed, len(chunks)):
            save_chunk(paths[index], encode_chunk(encoder, table, chunks[index], settings.name_layer,
                                                  settings.batch_tokens, progress))
    context_vectors = np.zeros((len(table.units), encoder.hidden_size), dtype=np.float32)
    span_vectors = np.zeros((sum(len(spans) for spans in table.spans), encoder.hidden_size), dtype=np.float32)
    for path in paths:
        with np.load(path) as saved:
            context_vectors[saved["units"]] = saved["context"]
            span_vectors[saved["span_rows"]] = saved["span"]
    return context_vectors, span_vectors, len(chunks), resumed


def vector_attributes(encoder: LoadedEncoder, config: RunConfig, key: str) -> dict[str, object]:
    """What vectors.h5 says about itself: the encoder, the pooling, the axes and the stage key."""
    return {
        "encoder": encoder.name, "encoder_path": encoder.path, "encoder_identity": encoder.identity,
        "name_layer": config.encoder.name_layer, "name_pooling": "max over the span's sub-words",
        "context_pooling": "first token of the top layer", "max_context_tokens": config.encoder.max_context_tokens,
        "axis_0": "row i belongs to id[i]", "axis_1": "hidden unit", "key": key,
    }


def parse_shard(text: str, where: str = "--shard") -> tuple[int, int]:
    """`i/n` -> (i, n) with 0 <= i < n; i counts from 0, like Slurm array task ids."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not int(match[1]) < int(match[2]):
        raise ConfigError("E203", where=where, field="shard", value=text,
                          reason="write it as i/n with 0 <= i < n (i counts from 0, like Slurm array ids)")
    return int(match[1]), int(match[2])


def shard_from_environment(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """The shard of a Slurm array task: i = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, n = SLURM_ARRAY_TASK_COUNT.

    None outside an array job. Subtracting the first id makes `--array=1-4` work too.
    """
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    where = "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT"
    try:
        index = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    except ValueError:
        raise ConfigError("E203", where=where, field="SLURM_ARRAY_TASK_ID", value=environ["SLURM_ARRAY_TASK_ID"],
                          reason="must be an integer") from None
    return parse_shard(f"{index}/{environ['SLURM_ARRAY_TASK_COUNT']}", where=where)


def shard_slice(frame: pl.DataFrame, shard: tuple[int, int]) -> pl.DataFrame:
    """Rows [i*N//n, (i+1)*N//n) of `frame`: the n slices are disjoint and cover every row."""
    index, count = shard
    first, end = index * frame.height // count, (index + 1) * frame.height // count
    return frame.slice(first, end - first)


def shard_paths(out_dir: Path, shard: tuple[int, int]) -> tuple[Path, Path]:
    """(vectors file, manifest) of one shard."""
    base = out_dir / SHARDS / f"vectors-{shard[0]}-of-{shard[1]}"
    return base.with_suffix(".h5"), base.with_suffix(".json")


def finished_shards(out_dir: Path, key: str) -> tuple[list[Path], list[dict]]:
    """Vectors files and manifests of all n shards of this key, in shard order.

    Raises E403 naming the first missing shard, E404 if this key's shards were cut in
    more than one way.
    """
    manifests: dict[tuple[int, int], dict] = {}
    for path in sorted((out_dir / SHARDS).glob("vectors-*-of-*.json")):
        match = re.fullmatch(r"vectors-(\d+)-of-(\d+)\.json", path.name)
        if match is None:
            continue
        manifest = read_manifest_file(path)
        if manifest.get("key") == key and path.with_suffix(".h5").is_file():
            manifests[(int(match[1]), int(match[2]))] = manifest
    counts = sorted({count for _, count in manifests})
    if not counts:
        raise CacheError("E403", path=out_dir / SHARDS / "vectors-<i>-of-<n>.h5",
                         detail="no shard of this encode (same inputs and settings) has finished; "
                                "run `xel-cli encode --shard i/n` for every i = 0 .. n-1")
    if len(counts) > 1:
        raise CacheError("E404", path=out_dir / SHARDS, detail=f"this encode's shards were cut in {counts} parts; "
                                                               "delete the set you do not want")
    count = counts[0]
    for index in range(count):
        if (index, count) not in manifests:
            raise CacheError("E403", path=shard_paths(out_dir, (index, count))[0],
                             detail=f"shard {index}/{count} is missing or was made with other inputs or settings; "
                                    f"run `xel-cli encode --shard {index}/{count}` with this run's config")
    return ([shard_paths(out_dir, (index, count))[0] for index in range(count)],
            [manifests[(index, count)] for index in range(count)])


def merge_group(paths: list[Path], group: str, expected_ids: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One group of all shards, in the order of `expected_ids`; every id exactly once or E404."""
    parts = [read_vectors(path, group) for path in paths]
    found = pl.DataFrame({"id": [i for ids, _, _ in parts for i in ids]}, schema={"id": pl.String})
    found = found.with_row_index("row")
    repeated = found.filter(pl.col("id").is_duplicated())
    if repeated.height:
        raise CacheError("E404", path=paths[0].parent,
                         detail=f"/{group} id {repeated['id'][0]!r} is in more than one shard")
    expected = pl.DataFrame({"id": expected_ids}, schema={"id": pl.String}).with_row_index("position")
    joined = expected.join(found, on="id", how="left").sort("position")
    missing = joined.filter(pl.col("row").is_null())
    extra = found.join(expected, on="id", how="anti")
    if missing.height or extra.height:
        first = missing["id"][0] if missing.height else extra["id"][0]
        raise CacheError("E404", path=paths[0].parent,
                         detail=f"the shards' /{group} ids differ from the triage output ({missing.height} missing, "
                                f"{extra.height} not expected, first {first!r})")
    rows = joined["row"].to_numpy()
    names = np.concatenate([p[1] for p in parts])[rows]
    contexts = np.concatenate([p[2] for p in parts])[rows]
    return expected_ids, names, contexts


def read_triage(config: RunConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(mentions sorted by mention_id, entities to encode sorted by kb_id) from the triage stage."""
    triage_dir = config.stage_dir("triage")
    paths = [triage_dir / name for name in ("mentions.parquet", "entities.parquet", "candidates.parquet")]
    mentions_lazy = scan_parquet_checked(paths[0], schema.MENTIONS, "triage")
    entities_lazy = scan_parquet_checked(paths[1], schema.ENTITIES, "triage")
    candidates_lazy = scan_parquet_checked(paths[2], schema.CANDIDATES, "triage")
    mentions = collect_checked(mentions_lazy.select("mention_id", "context", "start", "end").sort("mention_id"), paths[0])
    entities = entities_to_encode(entities_lazy, candidates_lazy, mentions_lazy, config.encoder.all_entities)
    return mentions, collect_checked(entities, *paths)


def stage_identity(config: RunConfig) -> tuple[str, dict[str, str], dict]:
    """(key, inputs, settings) of this run's encode: what vectors.h5 and its manifest are keyed by."""
    encoder_path = resolve_encoder_path(config.encoder.name)
    inputs = {"triage": upstream_key(config.stage_dir("triage"), "triage"), "encoder": encoder_identity(encoder_path)}
    # Batching, chunking and device change speed, not vectors (up to float rounding).
    settings = {k: v for k, v in to_dict(config.encoder).items() if k not in ("batch_tokens", "chunk_texts", "device")}
    return stage_key(STAGE, STAGE_VERSION, settings, inputs), inputs, settings


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
    work_dir = out_dir / f"work-{key}-name-pairs-{pairs_key}"  # starts with work-<key>: kept while this encode is current
    if force:
        shutil.rmtree(work_dir, ignore_errors=True)
    _, span_vectors, _, _ = encode_in_chunks(encoder, table, config.encoder, work_dir)
    attributes = {**vector_attributes(encoder, config, pairs_key), "name_pairs": str(pairs_path),
                  "content": "/names: every distinct foreign and English name of the pairs file, name vector only"}
    write_name_pair_vectors(target, attributes, config.encoder.store_float16, names, span_vectors[span_rows])
    shutil.rmtree(work_dir, ignore_errors=True)
    return len(names)


def run(config: RunConfig, force: bool = False, shard: tuple[int, int] | None = None,
        merge: bool = False) -> StageResult:
    """Encode every mention and needed entity into vectors.h5; or one shard of them; or merge the shards.

    `shard=(i, n)` encodes the i-th of n contiguous slices of the id-sorted mentions and
    entities into shards/vectors-<i>-of-<n>.h5 (+ .json manifest). `merge` joins all n
    into vectors.h5 and writes the stage manifest, as an unsharded run does. Work is
    saved in chunks under work-<key>[-<i>-of-<n>]/, so a killed run resumes. With
    `[train] name_pairs`, an unsharded run and the merge also write name_pairs.h5.
    """
    if shard is not None or not config.train.name_matching:  # λ = 0: train reads no pairs, so none are encoded
        return _encode_vectors(config, force, shard, merge)
    from pipeline.inputs import read_name_pairs

    pairs = read_name_pairs(config.train.name_pairs)  # a bad pairs file stops the stage before any encoding
    result = _encode_vectors(config, force, shard, merge)
    key, _, _ = stage_identity(config)
    embedded = embed_name_pairs(config, config.stage_dir(STAGE), key, force, pairs)
    if not embedded:
        return result
    return dataclasses.replace(result, skipped=False, counts={**result.counts, "name_pair_names": embedded})


def _encode_vectors(config: RunConfig, force: bool, shard: tuple[int, int] | None, merge: bool) -> StageResult:
    started = time.time()
    out_dir = config.stage_dir(STAGE)
    key, inputs, settings = stage_identity(config)
    if merge:
        return merge_shards(config, out_dir, key, inputs, settings, force, started)
    if shard is None:
        target, work_dir = out_dir / VECTORS, out_dir / f"work-{key}"
        if not force and is_up_to_date(out_dir, key):
            # A run killed after its manifest but before deleting its chunks leaves them behind.
            shutil.rmtree(work_dir, ignore_errors=True)
            return StageResult(STAGE, out_dir, skipped=True, seconds=time.time() - started)
        invalidate(out_dir, work_dir, settings=settings, inputs=inputs)
    else:
        target, shard_manifest = shard_paths(out_dir, shard)
        work_dir = out_dir / f"work-{key}-{shard[0]}-of-{shard[1]}"
        if not force and shard_manifest.is_file() and target.is_file() and read_manifest_file(shard_manifest)["key"] == key:
            return StageResult(STAGE, target.parent, skipped=True, seconds=time.time() - started)
        shard_manifest.unlink(missing_ok=True)
    if force:
        shutil.rmtree(work_dir, ignore_errors=True)

    mentions, entities = read_triage(config)
    if shard is not None:
        # Contiguous slices of the id-sorted lists: shards in order concatenate to the unsharded order.
        mentions, entities = shard_slice(mentions, shard), shard_slice(entities, shard)
    encoder = load_encoder(config.encoder)
    plan = plan_units(mentions, entities, encoder, config.encoder)
    logger.info("encoding %d distinct texts (%d sub-words) for %d mentions and %d entities on %s%s",
                len(plan.table.units), plan.sub_words, mentions.height, entities.height, encoder.device,
                f" (shard {shard[0]}/{shard[1]})" if shard else "")
    context_vectors, span_vectors, chunks, resumed = encode_in_chunks(encoder, plan.table, config.encoder, work_dir)
    attributes = vector_attributes(encoder, config, key)
    if shard is not None:
        attributes["shard"] = f"{shard[0]}/{shard[1]}"
    write_vectors(target, attributes, config.encoder.store_float16, {
        "mentions": (mentions["mention_id"].to_list(), span_vectors[plan.mention_span_rows],
                     context_vectors[plan.mention_units]),
        "entities": (entities["kb_id"].to_list(), span_vectors[plan.entity_span_rows],
                     context_vectors[plan.entity_units]),
    })
    seconds = time.time() - started
    counts = {"mentions": mentions.height, "entities": entities.height, "distinct_texts": len(plan.table.units),
              "sub_words": plan.sub_words, "chunks": chunks, "chunks_resumed": resumed}
    extra = {"encoder_path": encoder.path, "device": str(encoder.device)}
    if shard is None:
        write_manifest(out_dir, stage=STAGE, key=key, inputs=inputs, settings=settings, counts=counts,
                       outputs=[VECTORS], started=started, extra=extra)
    else:
        write_json_atomic(shard_manifest, {"stage": STAGE, "key": key, "shard": list(shard), "inputs": inputs,
                                           "settings": settings, "counts": counts, "outputs": [target.name],
                                           "versions": library_versions(), "seconds": round(seconds, 3), **extra})
    # Only now that the result is in place: the chunks are no longer needed to resume.
    shutil.rmtree(work_dir, ignore_errors=True)
    if shard is None:
        remove_stale_work(out_dir, key)
    return StageResult(STAGE, target.parent, skipped=False, seconds=seconds, counts=counts,
                       summary={"texts_per_second": len(plan.table.units) / max(seconds, 1e-9)})


def remove_stale_work(out_dir: Path, key: str) -> None:
    """Delete chunk folders of other keys: a finished stage will never resume them."""
    for folder in out_dir.glob("work-*"):
        if not folder.name.startswith(f"work-{key}"):
            shutil.rmtree(folder, ignore_errors=True)


def merge_shards(config: RunConfig, out_dir: Path, key: str, inputs: dict[str, str], settings: dict,
                 force: bool, started: float) -> StageResult:
    """Join all n finished shards of this key into vectors.h5 and write the stage manifest."""
    if not force and is_up_to_date(out_dir, key):
        return StageResult(STAGE, out_dir, skipped=True, seconds=time.time() - started)
    mentions, entities = read_triage(config)
    paths, manifests = finished_shards(out_dir, key)
    for path in paths:
        try:
            with h5py.File(path, "r") as handle:
                attributes = dict(handle.attrs)
        except OSError as exc:
            raise SchemaError("E302", path=path, detail=str(exc)) from None
        if attributes.get("key") != key or attributes.get("encoder_identity") != inputs["encoder"]:
            raise CacheError("E404", path=path,
                             detail="its attributes name another encoder or stage key than its manifest")
    attributes.pop("shard", None)
    invalidate(out_dir, settings=settings, inputs=inputs)
    groups = {"mentions": merge_group(paths, "mentions", mentions["mention_id"].to_list()),
              "entities": merge_group(paths, "entities", entities["kb_id"].to_list())}
    write_vectors(out_dir / VECTORS, attributes, config.encoder.store_float16, groups)
    counts = {"mentions": mentions.height, "entities": entities.height, "shards": len(paths)}
    for name in ("distinct_texts", "sub_words"):
        counts[name] = int(sum(m["counts"][name] for m in manifests))
    write_manifest(out_dir, stage=STAGE, key=key, inputs=inputs, settings=settings, counts=counts, outputs=[VECTORS],
                   started=started, extra={"encoder_path": str(attributes["encoder_path"]), "shards": len(paths)})
    remove_stale_work(out_dir, key)
    return StageResult(STAGE, out_dir, skipped=False, seconds=time.time() - started, counts=counts)
