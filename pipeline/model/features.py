"""Tensors the ranker reads: cached vectors, one-hot types and candidate index matrices.

Everything is addressed by integer rows (mention row, entity row) so batches are built
by indexing device tensors, never by Python objects per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.core.errors import SchemaError
from pipeline.formats import triage_tables
from pipeline.formats.vectors import VECTORS, read_vectors

UNKNOWN_TYPE = -1


@dataclass
class RankerInputs:
    """Vectors and types of every encoded mention and entity, on one device.

    mention_name/mention_context: (n_mentions, H); entity_name/entity_context:
    (n_entities, H); *_type_onehot: (n, n_types), all-zero for a dropped type.
    `mentions` is the mention table in row order (with `row`), `entity_ids` the KB
    ids in entity row order.
    """

    mentions: pl.DataFrame
    entity_ids: pl.DataFrame
    mention_name: torch.Tensor
    mention_context: torch.Tensor
    entity_name: torch.Tensor
    entity_context: torch.Tensor
    mention_type_onehot: torch.Tensor
    entity_type_onehot: torch.Tensor
    # Triage evidence of every (mention, candidate) pair, looked up by a sorted key
    # mention_row * n_entities + entity_row; pairs triage never proposed get zeros.
    pair_keys: torch.Tensor | None = None
    pair_values: torch.Tensor | None = None

    def batch(
        self, mention_rows: torch.Tensor, entity_rows: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Ranker inputs for mention_rows (B,) against entity_rows (B, n): the four arguments of `Ranker.forward`.

        Returns (mention features {feature: (B, width)}, features of the distinct
        entities {feature: (U, width)}, entity_index (B, n) into U, the pairs' triage
        evidence (B, n, TRIAGE_WIDTH) or None when no triage evidence is attached).
        """
        distinct, entity_index = torch.unique(entity_rows, return_inverse=True)
        mentions = {
            "name": self.mention_name[mention_rows],
            "context": self.mention_context[mention_rows],
            "type": self.mention_type_onehot[mention_rows],
        }
        entities = {
            "name": self.entity_name[distinct],
            "context": self.entity_context[distinct],
            "type": self.entity_type_onehot[distinct],
        }
        return mentions, entities, entity_index, self.pair_triage(mention_rows, entity_rows)

    def pair_triage(self, mention_rows: torch.Tensor, entity_rows: torch.Tensor) -> torch.Tensor | None:
        """(B, n, TRIAGE_WIDTH) triage evidence of each pair, zeros where triage had none."""
        if self.pair_keys is None or self.pair_keys.numel() == 0:
            return None
        keys = mention_rows[:, None] * self.entity_name.shape[0] + entity_rows  # (B, n)
        slots = torch.searchsorted(self.pair_keys, keys).clamp(max=self.pair_keys.numel() - 1)
        found = self.pair_keys[slots] == keys
        return torch.where(found[..., None], self.pair_values[slots], torch.zeros((), device=keys.device))

    def attach_triage(self, candidates: pl.DataFrame) -> None:
        """Index the candidates' scores and sources (candidates needs mention_id, kb_id, score, sources)."""
        from pipeline.model.ranker import TRIAGE_SOURCES

        table = (
            candidates.join(self.mentions.select("mention_id", pl.col("row").alias("mention_row")), on="mention_id")
            .join(self.entity_ids.rename({"row": "entity_row"}), on="kb_id")
            .with_columns(
                (pl.col("mention_row").cast(pl.Int64) * self.entity_name.shape[0] + pl.col("entity_row")).alias("key")
            )
            .sort("key")
        )
        values = [table["score"].cast(pl.Float32)] + [
            table["sources"].list.contains(source).cast(pl.Float32) for source in TRIAGE_SOURCES
        ]
        device = self.entity_name.device
        self.pair_keys = torch.from_numpy(table["key"].to_numpy().copy()).to(device)
        self.pair_values = torch.from_numpy(np.stack([v.to_numpy() for v in values], axis=1)).to(device)


def type_vocabulary(values: pl.Series, min_count: int) -> list[str]:
    """Types seen at least `min_count` times, sorted (the paper drops rarer ones)."""
    counts = values.drop_nulls().value_counts()
    return sorted(counts.filter(pl.col("count") >= min_count)[values.name].to_list())


def one_hot(values: pl.Series, vocabulary: list[str]) -> torch.Tensor:
    index = {t: i for i, t in enumerate(vocabulary)}
    rows = np.array(
        [index.get(v, UNKNOWN_TYPE) if v is not None else UNKNOWN_TYPE for v in values.to_list()], dtype=np.int64
    )  # int64 when empty too (an empty array is float64, which cannot index)
    matrix = np.zeros((len(rows), max(len(vocabulary), 1)), dtype=np.float32)
    known = rows >= 0
    matrix[np.nonzero(known)[0], rows[known]] = 1.0
    return torch.from_numpy(matrix)


def load_inputs(
    triage_dir: Path,
    encode_dir: Path,
    mention_types: list[str] | None,
    entity_types: list[str] | None,
    min_type_count: int,
    device: torch.device,
) -> tuple[RankerInputs, list[str], list[str]]:
    """Join the vectors with the mention and entity tables by id (never by row order).

    Type vocabularies come from the training split unless given (evaluate passes the
    ones the model was trained with).
    """
    mention_ids, mention_name, mention_context = read_vectors(encode_dir / VECTORS, "mentions")
    entity_ids, entity_name, entity_context = read_vectors(encode_dir / VECTORS, "entities")
    mentions = triage_tables.read(
        triage_dir,
        triage_tables.MENTIONS,
        "mention_id",
        "doc_id",
        "lang",
        "mention",
        "split",
        "gold_kb_id",
        "gold_tac_id",
        "entity_type",
        "mention_type",
        "doc_start",
        "doc_end",
    )
    rows = pl.DataFrame({"mention_id": mention_ids, "row": np.arange(len(mention_ids))})
    mentions = rows.join(mentions, on="mention_id", how="left")
    if mentions["split"].null_count():
        missing = mentions.filter(pl.col("split").is_null())["mention_id"].head(3).to_list()
        raise SchemaError(
            "E302", path=encode_dir / VECTORS, detail=f"holds mention ids not in the triage table (e.g. {missing})"
        )
    entity_table = (
        pl.DataFrame({"kb_id": entity_ids, "row": np.arange(len(entity_ids))})
        .join(triage_tables.read(triage_dir, triage_tables.ENTITIES, "kb_id", "type"), on="kb_id", how="left")
        .sort("row")
    )
    if mention_types is None or entity_types is None:
        training = mentions.filter(pl.col("split") == "train")
        mention_types = type_vocabulary(training["entity_type"], min_type_count)
        gold_types = training.join(entity_table.select(pl.col("kb_id").alias("gold_kb_id"), "type"), on="gold_kb_id")[
            "type"
        ]
        entity_types = type_vocabulary(gold_types, min_type_count)
    inputs = RankerInputs(
        mentions=mentions,
        entity_ids=entity_table.select("kb_id", "row"),
        mention_name=torch.from_numpy(mention_name).to(device),
        mention_context=torch.from_numpy(mention_context).to(device),
        entity_name=torch.from_numpy(entity_name).to(device),
        entity_context=torch.from_numpy(entity_context).to(device),
        mention_type_onehot=one_hot(mentions["entity_type"], mention_types).to(device),
        entity_type_onehot=one_hot(entity_table["type"], entity_types).to(device),
    )
    return inputs, mention_types, entity_types


def candidate_matrix(candidates: pl.DataFrame, inputs: RankerInputs, mention_rows: np.ndarray) -> np.ndarray:
    """(len(mention_rows), k) entity rows of each mention's candidates in rank order, -1 padded."""
    wanted = inputs.mentions.select("mention_id", "row").filter(pl.col("row").is_in(mention_rows.tolist()))
    table = (
        candidates.join(wanted, on="mention_id")
        .join(inputs.entity_ids.rename({"row": "entity_row"}), on="kb_id")
        .sort("row", "rank")
        .with_columns(pl.int_range(pl.len()).over("row").alias("slot"))
    )
    width = max(int(table["slot"].max() or 0) + 1, 1) if table.height else 1
    position = np.full(int(inputs.mentions.height), -1, dtype=np.int64)
    position[mention_rows] = np.arange(len(mention_rows))
    matrix = np.full((len(mention_rows), width), -1, dtype=np.int64)
    matrix[position[table["row"].to_numpy()], table["slot"].to_numpy()] = table["entity_row"].to_numpy()
    return matrix


def gold_rows(inputs: RankerInputs, mention_rows: np.ndarray) -> np.ndarray:
    """Entity row of each mention's gold entity; -1 for NIL, unknown or unencoded gold."""
    gold = (
        inputs.mentions.select("row", "gold_kb_id")
        .join(inputs.entity_ids.rename({"kb_id": "gold_kb_id", "row": "entity_row"}), on="gold_kb_id", how="left")
        .sort("row")
    )
    return gold["entity_row"].fill_null(-1).to_numpy()[mention_rows]


@torch.no_grad()
def score_candidates(
    model: torch.nn.Module,
    inputs: RankerInputs,
    mention_rows: np.ndarray,
    matrix: np.ndarray,
    batch_mentions: int = 1024,
) -> np.ndarray:
    """Ranker scores (len(mention_rows), k) for a candidate matrix; NaN where padded.

    On one CPU thread (`threads.small_model_threads`), as the ranker trains: no faster on more, and
    the scores then do not depend on the process's thread count.
    """
    from pipeline.core.threads import small_model_threads

    with small_model_threads():
        return _score_candidates(model, inputs, mention_rows, matrix, batch_mentions)


def _score_candidates(
    model: torch.nn.Module, inputs: RankerInputs, mention_rows: np.ndarray, matrix: np.ndarray, batch_mentions: int
) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = inputs.mention_name.device
    out = np.full(matrix.shape, np.nan, dtype=np.float32)
    for offset in range(0, len(mention_rows), batch_mentions):
        rows = torch.tensor(mention_rows[offset : offset + batch_mentions], device=device)
        entities = torch.tensor(matrix[offset : offset + batch_mentions], device=device)
        scores = model(*inputs.batch(rows, entities.clamp(min=0)))
        scores = torch.where(entities >= 0, scores, torch.full_like(scores, float("nan")))
        out[offset : offset + len(rows)] = scores.float().cpu().numpy()
    model.train(was_training)
    return out


@torch.no_grad()
def score_nil(
    model: torch.nn.Module, inputs: RankerInputs, mention_rows: np.ndarray, batch_mentions: int = 1024
) -> np.ndarray | None:
    """(len(mention_rows),) float32 score of each mention's learned NIL option (`Ranker.nil_scores`),
    or None when the model has none (trained with train.nil_candidate = false, or the baseline).
    On one CPU thread, as `score_candidates`."""
    from pipeline.core.threads import small_model_threads

    if not getattr(model, "has_nil", False):
        return None
    with small_model_threads():
        return _score_nil(model, inputs, mention_rows, batch_mentions)


def _score_nil(
    model: torch.nn.Module, inputs: RankerInputs, mention_rows: np.ndarray, batch_mentions: int
) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = inputs.mention_name.device
    out = np.empty(len(mention_rows), dtype=np.float32)
    for offset in range(0, len(mention_rows), batch_mentions):
        rows = torch.tensor(mention_rows[offset : offset + batch_mentions], device=device)
        mentions = {
            "name": inputs.mention_name[rows],
            "context": inputs.mention_context[rows],
            "type": inputs.mention_type_onehot[rows],
        }
        out[offset : offset + len(rows)] = model.nil_scores(mentions).float().cpu().numpy()
    model.train(was_training)
    return out
