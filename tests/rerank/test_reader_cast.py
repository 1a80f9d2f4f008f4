"""Scoring with the reader's encoder weights cast to bf16 (reader.json's `cast_weights`): the rerank stage
and link load the reader alike, so both score this way, and readers saved before the key keep autocast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.model.reader import build_examples, load_reader, new_reader, save_reader, score_mentions
from pipeline.model.reader_inputs import Layout

LAYOUT = {"max_seq_tokens": 48, "max_context_tokens": 16, "top_k": 2}


def candidates(count: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(mentions, top candidates, entities): `count` mentions of "Acme", each with two candidates."""
    mentions = pl.DataFrame(
        {
            "mention_id": [f"m{n}" for n in range(count)],
            "context": [f"Yesterday Acme was new {'and old ' * n}." for n in range(count)],
            "start": [10] * count,
            "end": [14] * count,
        }
    )
    top = pl.DataFrame(
        {
            "mention_id": [f"m{n}" for n in range(count) for _ in range(2)],
            "kb_id": ["A", "B"] * count,
            "slot": [1, 2] * count,
        }
    )
    entities = pl.DataFrame(
        {
            "kb_id": ["A", "B"],
            "name": ["Acme", "Acme river"],
            "type": ["ORG", "LOC"],
            "description": ["a firm", "a river"],
        }
    )
    return mentions, top, entities


def saved(tiny_encoder_dir: Path, folder: Path, **meta) -> tuple[object, object]:
    reader, tokenizer = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13)
    torch.nn.init.normal_(reader.slot_projection.weight)  # a head that is not the identity
    save_reader(reader, tokenizer, folder, {"layout": LAYOUT, **meta})
    return reader, tokenizer


def test_a_reader_saved_with_cast_weights_loads_bf16_and_scores_near_autocast(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    reader, tokenizer = saved(tiny_encoder_dir, tmp_path / "reader", precision="bf16", cast_weights=True)
    loaded, _, _ = load_reader(tmp_path / "reader", torch.device("cpu"))
    assert {p.dtype for p in loaded.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.head.parameters()} == {torch.float32}  # the head reads fp32 states

    examples = build_examples(tokenizer, *candidates(12), Layout(**LAYOUT))
    cast = score_mentions(loaded, examples, torch.device("cpu"), "bf16")
    autocast = score_mentions(reader, examples, torch.device("cpu"), "bf16")
    fp32 = score_mentions(reader, examples, torch.device("cpu"), "fp32")
    assert cast.height == autocast.height == 24
    for other in (autocast, fp32):
        assert np.abs(cast["score"].to_numpy() - other["score"].to_numpy()).max() < 0.05
    assert not np.array_equal(cast["score"].to_numpy(), fp32["score"].to_numpy())  # it did run in bf16


def test_readers_without_the_key_or_in_fp32_keep_fp32_weights(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    saved(tiny_encoder_dir, tmp_path / "old", precision="bf16")  # saved before cast_weights existed
    saved(tiny_encoder_dir, tmp_path / "fp32", precision="fp32", cast_weights=True)
    for name in ("old", "fp32"):
        loaded, _, _ = load_reader(tmp_path / name, torch.device("cpu"))
        assert {p.dtype for p in loaded.parameters()} == {torch.float32}, name


def test_a_cast_weights_that_is_not_true_or_false_is_damage(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    from pipeline.core.errors import CacheError

    saved(tiny_encoder_dir, tmp_path / "reader", precision="bf16", cast_weights="no")
    with pytest.raises(CacheError, match=r"E402.*cast_weights must be true or false \(got 'no'\)"):
        load_reader(tmp_path / "reader", torch.device("cpu"))
