"""What encode encodes: the distinct token sequences ("units") of mentions and entities.

A mention's context window is cut around it (the mention centred, up to
`max_context_tokens` sub-words; a context that fits is one unit for all its mentions);
an entity gives its description's first sub-words and its name alone. Identical token
sequences are one unit. `Plan` says which unit and which span row serve each id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.core.config import EncoderConfig
from pipeline.encoders.encoder import LoadedEncoder, mention_window, token_span


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
    cut = next(i for i in range(len(wrapped)) if wrapped[i : i + len(bare)] == bare)
    return wrapped[:cut], wrapped[cut + len(bare) :]


def plan_mentions(
    mentions: pl.DataFrame, encoder: LoadedEncoder, table: UnitTable, max_tokens: int, first_span_row: int
) -> tuple[np.ndarray, np.ndarray]:
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
        window = ids[window_start : window_start + body]
        unit = table.add(np.concatenate([prefix, window, suffix]).astype(np.int64))
        table.spans[unit].append((int(span_row[row]), first + len(prefix), last + len(prefix)))
        unit_of_mention[row] = unit
    return unit_of_mention, span_row


def plan_entities(
    entities: pl.DataFrame,
    encoder: LoadedEncoder,
    table: UnitTable,
    max_context_tokens: int,
    max_name_tokens: int,
    first_span_row: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Add each entity's name unit (span = all its sub-words) and description unit."""
    if entities.height == 0:  # a shard may hold none; tokenizers refuse an empty batch
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    prefix, suffix = _special_prefix(encoder.tokenizer)
    tokenizer = encoder.tokenizer
    names = entities["name"].to_list()
    texts = entities.select(pl.coalesce(pl.col("description").replace("", None), "name"))["description"].to_list()
    name_ids = tokenizer(
        names, add_special_tokens=False, truncation=True, max_length=max_name_tokens - len(prefix) - len(suffix)
    )["input_ids"]
    text_ids = tokenizer(
        texts, add_special_tokens=False, truncation=True, max_length=max_context_tokens - len(prefix) - len(suffix)
    )["input_ids"]
    context_unit = np.zeros(entities.height, dtype=np.int64)
    span_row = np.arange(first_span_row, first_span_row + entities.height)
    for row, (ids, description_ids) in enumerate(zip(name_ids, text_ids)):
        ids = _add_name_unit(table, ids, prefix, suffix, tokenizer.unk_token_id, int(span_row[row]))
        context_unit[row] = table.add(np.asarray(prefix + (description_ids or ids) + suffix, dtype=np.int64))
    return context_unit, span_row


def _add_name_unit(
    table: UnitTable, ids: list[int], prefix: list[int], suffix: list[int], unk_id: int, span_row: int
) -> list[int]:
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
    name_ids = tokenizer(
        names, add_special_tokens=False, truncation=True, max_length=max_name_tokens - len(prefix) - len(suffix)
    )["input_ids"]
    for row, ids in enumerate(name_ids):
        _add_name_unit(table, ids, prefix, suffix, tokenizer.unk_token_id, row)
    return np.arange(len(names))


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
    entity_units, entity_span_rows = plan_entities(
        entities, encoder, table, settings.max_context_tokens, settings.max_name_tokens, mentions.height
    )
    return Plan(table, mention_units, mention_span_rows, entity_units, entity_span_rows)
