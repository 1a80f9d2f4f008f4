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
"""

from __future__ import annotations

import logging
import time

import h5py
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from pipeline import schema
from pipeline.config import RunConfig, to_dict
from pipeline.encoder import LoadedEncoder, forward_units, load_encoder, resolve_encoder_path, encoder_identity, token_span
from pipeline.io import atomic_path, scan_parquet_checked
from pipeline.stage import StageResult, invalidate, is_up_to_date, stage_key, upstream_key, write_manifest

logger = logging.getLogger(__name__)

STAGE = "encode"
STAGE_VERSION = 1
VECTORS = "vectors.h5"


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
        first, last = token_span(offsets[index], start, end)
        window_start = 0
        if len(ids) > body:
            # Centre the mention in the window, as the paper does for long contexts.
            centre = (first + last) // 2
            window_start = int(np.clip(centre - body // 2, 0, len(ids) - body))
        window = ids[window_start: window_start + body]
        unit = table.add(np.concatenate([prefix, window, suffix]).astype(np.int64))
        first = first - window_start + len(prefix)
        last = min(last - window_start, body) + len(prefix)
        table.spans[unit].append((int(span_row[row]), first, max(last, first + 1)))
        unit_of_mention[row] = unit
    return unit_of_mention, span_row


def plan_entities(entities: pl.DataFrame, encoder: LoadedEncoder, table: UnitTable, max_context_tokens: int,
                  max_name_tokens: int, first_span_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Add each entity's name unit (span = all its sub-words) and description unit."""
    prefix, suffix = _special_prefix(encoder.tokenizer)
    tokenizer = encoder.tokenizer
    names = entities["name"].to_list()
    texts = entities.select(pl.coalesce(pl.col("description").replace("", None), "name"))["description"].to_list()
    name_ids = tokenizer(names, add_special_tokens=False, truncation=True, max_length=max_name_tokens - len(prefix) - len(suffix))["input_ids"]
    text_ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_context_tokens - len(prefix) - len(suffix))["input_ids"]
    context_unit = np.zeros(entities.height, dtype=np.int64)
    span_row = np.arange(first_span_row, first_span_row + entities.height)
    for row, (ids, description_ids) in enumerate(zip(name_ids, text_ids)):
        ids = ids or [tokenizer.unk_token_id]
        unit = table.add(np.asarray(prefix + ids + suffix, dtype=np.int64))
        table.spans[unit].append((int(span_row[row]), len(prefix), len(prefix) + len(ids)))
        context_unit[row] = table.add(np.asarray(prefix + (description_ids or ids) + suffix, dtype=np.int64))
    return context_unit, span_row


def entities_to_encode(entities: pl.LazyFrame, candidates: pl.LazyFrame, mentions: pl.LazyFrame, everything: bool) -> pl.DataFrame:
    """Entities that appear as a candidate or a gold link (all of them if asked)."""
    if everything:
        return entities.sort("kb_id").collect()
    needed = pl.concat([
        candidates.select("kb_id"),
        mentions.select(pl.col("gold_kb_id").alias("kb_id")).filter(pl.col("kb_id").is_not_null() & (pl.col("kb_id") != schema.NIL_ID)),
    ]).unique()
    return entities.join(needed, on="kb_id", how="semi").sort("kb_id").collect()


def write_vectors(path, encoder: LoadedEncoder, config: RunConfig, key: str, mention_ids: list[str],
                  mention_names: np.ndarray, mention_contexts: np.ndarray, entity_ids: list[str],
                  entity_names: np.ndarray, entity_contexts: np.ndarray) -> None:
    dtype = np.float16 if config.encoder.store_float16 else np.float32
    with atomic_path(path) as temp_path:
        with h5py.File(temp_path, "w") as handle:
            attributes = {
                "encoder": encoder.name, "encoder_path": encoder.path, "encoder_identity": encoder.identity,
                "name_layer": config.encoder.name_layer, "name_pooling": "max over the span's sub-words",
                "context_pooling": "first token of the top layer", "max_context_tokens": config.encoder.max_context_tokens,
                "axis_0": "row i belongs to id[i]", "axis_1": "hidden unit", "key": key,
            }
            handle.attrs.update(attributes)
            for group_name, ids, names, contexts in (("mentions", mention_ids, mention_names, mention_contexts),
                                                     ("entities", entity_ids, entity_names, entity_contexts)):
                group = handle.create_group(group_name)
                group.create_dataset("id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
                chunk = (min(max(len(ids), 1), 4096), names.shape[1])
                group.create_dataset("name", data=names.astype(dtype), chunks=chunk if len(ids) else None)
                group.create_dataset("context", data=contexts.astype(dtype), chunks=chunk if len(ids) else None)


def read_vectors(path, group: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, name vectors, context vectors) of one group, as float32."""
    from pipeline.errors import SchemaError

    try:
        with h5py.File(path, "r") as handle:
            ids = [v.decode() if isinstance(v, bytes) else v for v in handle[group]["id"][:]]
            names = handle[group]["name"][:].astype(np.float32)
            contexts = handle[group]["context"][:].astype(np.float32)
    except (OSError, KeyError) as exc:
        raise SchemaError("E302", path=path, detail=str(exc)) from None
    if not (np.isfinite(names).all() and np.isfinite(contexts).all()):
        raise SchemaError("E302", path=path, detail=f"/{group} holds NaN or infinite values")
    return ids, names, contexts


def run(config: RunConfig, force: bool = False) -> StageResult:
    started = time.time()
    out_dir = config.stage_dir(STAGE)
    triage_dir = config.stage_dir("triage")
    encoder_path = resolve_encoder_path(config.encoder.name)
    inputs = {"triage": upstream_key(triage_dir, "triage"), "encoder": encoder_identity(encoder_path)}
    # Batch size and device change speed, not vectors (up to float rounding).
    settings = {k: v for k, v in to_dict(config.encoder).items() if k not in ("batch_tokens", "device")}
    key = stage_key(STAGE, STAGE_VERSION, settings, inputs)
    if not force and is_up_to_date(out_dir, key):
        return StageResult(STAGE, out_dir, skipped=True, seconds=time.time() - started)
    invalidate(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    mentions_lazy = scan_parquet_checked(triage_dir / "mentions.parquet", schema.MENTIONS, "triage")
    entities_lazy = scan_parquet_checked(triage_dir / "entities.parquet", schema.ENTITIES, "triage")
    candidates_lazy = scan_parquet_checked(triage_dir / "candidates.parquet", schema.CANDIDATES, "triage")
    mentions = mentions_lazy.select("mention_id", "context", "start", "end").sort("mention_id").collect()
    entities = entities_to_encode(entities_lazy, candidates_lazy, mentions_lazy, config.encoder.all_entities)

    encoder = load_encoder(config.encoder)
    table = UnitTable()
    mention_units, mention_span_rows = plan_mentions(mentions, encoder, table, config.encoder.max_context_tokens, 0)
    entity_units, entity_span_rows = plan_entities(entities, encoder, table, config.encoder.max_context_tokens,
                                                   config.encoder.max_name_tokens, mentions.height)
    total_tokens = int(sum(len(u) for u in table.units))
    logger.info("encoding %d distinct texts (%d sub-words) for %d mentions and %d entities on %s",
                len(table.units), total_tokens, mentions.height, entities.height, encoder.device)
    with tqdm(total=len(table.units), unit="text", desc="encode", disable=None) as progress:
        context_vectors, span_vectors = forward_units(encoder, table.units, table.spans, config.encoder.name_layer,
                                                      config.encoder.batch_tokens, progress)
    write_vectors(out_dir / VECTORS, encoder, config, key,
                  mentions["mention_id"].to_list(), span_vectors[mention_span_rows], context_vectors[mention_units],
                  entities["kb_id"].to_list(), span_vectors[entity_span_rows], context_vectors[entity_units])
    seconds = time.time() - started
    counts = {"mentions": mentions.height, "entities": entities.height, "distinct_texts": len(table.units),
              "sub_words": total_tokens}
    write_manifest(out_dir, stage=STAGE, key=key, inputs=inputs, settings=settings, counts=counts,
                   outputs=[VECTORS], started=started, extra={"encoder_path": encoder.path, "device": str(encoder.device)})
    return StageResult(STAGE, out_dir, skipped=False, seconds=seconds, counts=counts,
                       summary={"texts_per_second": len(table.units) / max(seconds, 1e-9)})
