"""Resumable encoding (`pipeline/encoders/chunks.py`): a saved chunk is reused only for the same content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from conftest import TINY_CORPUS
from pipeline.core.config import EncoderConfig
from pipeline.encoders.chunks import chunk_units, encode_in_chunks
from pipeline.encoders.encoder import load_encoder
from pipeline.encoders.plan import plan_units

DESCRIPTIONS = TINY_CORPUS[:6]  # the six English sentences
# The first description's words in another order: the same sub-words, so the same lengths and unit
# indices, and the same chunks cut from them; other text, so other vectors.
REORDERED = "Angela Merkel met Barack Obama in Berlin on Monday."


@pytest.fixture
def encoder(tiny_encoder_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_encoder(EncoderConfig(name=str(tiny_encoder_dir), device="cpu", precision="fp32"))
    torch.set_num_threads(threads)


def entities(descriptions: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "kb_id": [f"E{i}" for i in range(len(descriptions))],
            "name": [f"Entity {i}" for i in range(len(descriptions))],
            "description": descriptions,
        }
    )


def no_mentions() -> pl.DataFrame:
    return pl.DataFrame(schema={"mention_id": pl.String, "context": pl.String, "start": pl.Int64, "end": pl.Int64})


def test_a_changed_text_after_an_interrupted_encode_is_encoded_again(encoder, tmp_path: Path) -> None:
    """An encode killed after some chunks, rerun on inputs of which one text changed (same sub-word count,
    so the same unit indices and chunks): the chunk that held the old text is encoded again, giving the
    vectors of a fresh encode. Before, chunks were matched on unit indices only, so the resumed encode
    took the old text's vectors for the new text."""
    settings = EncoderConfig(name=encoder.path, device="cpu", chunk_texts=3, max_context_tokens=64, batch_tokens=256)
    changed = [REORDERED, *DESCRIPTIONS[1:]]
    old_plan = plan_units(no_mentions(), entities(DESCRIPTIONS), encoder, settings)
    new_plan = plan_units(no_mentions(), entities(changed), encoder, settings)
    old_chunks, new_chunks = chunk_units(old_plan.table, 3), chunk_units(new_plan.table, 3)
    assert len(old_chunks) > 2 and all(np.array_equal(a, b) for a, b in zip(old_chunks, new_chunks))
    unit = int(new_plan.entity_units[0])  # the changed description's unit
    assert not np.array_equal(old_plan.table.units[unit], new_plan.table.units[unit])

    work = tmp_path / "work"
    old_contexts, _, chunks, _ = encode_in_chunks(encoder, old_plan.table, settings, work)
    last = work / f"chunk-{chunks - 1:06d}.npz"
    assert unit not in np.load(last)["units"]  # the changed text's chunk stays saved: the kill came after it
    last.unlink()
    contexts, spans, _, resumed = encode_in_chunks(encoder, new_plan.table, settings, work)
    fresh_contexts, fresh_spans, _, _ = encode_in_chunks(encoder, new_plan.table, settings, tmp_path / "fresh")
    np.testing.assert_array_equal(contexts, fresh_contexts)
    np.testing.assert_array_equal(spans, fresh_spans)
    assert not np.allclose(contexts[unit], old_contexts[unit])
    chunk_of_unit = next(index for index, chunk in enumerate(new_chunks) if unit in chunk)
    assert chunk_of_unit != chunks - 1 and resumed == chunks - 2  # every other chunk, unchanged, is still taken

    # The same texts again: every saved chunk is taken.
    again, _, _, resumed = encode_in_chunks(encoder, new_plan.table, settings, work)
    assert resumed == chunks and np.array_equal(again, contexts)


def test_every_damaged_saved_chunk_is_warned_and_redone_and_every_intact_one_reused(
    encoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fresh-user report F10: the resume stopped at the first damaged chunk, so the intact chunks after it
    were encoded again and a second damaged chunk got no `[W403]`. Each saved chunk is checked."""
    import logging
    import os

    settings = EncoderConfig(name=encoder.path, device="cpu", chunk_texts=1, max_context_tokens=64, batch_tokens=256)
    plan = plan_units(no_mentions(), entities(DESCRIPTIONS), encoder, settings)
    work = tmp_path / "work"
    contexts, spans, chunks, _ = encode_in_chunks(encoder, plan.table, settings, work)
    assert chunks > 4
    paths = sorted(work.glob("chunk-*.npz"))
    for damaged in (paths[1], paths[3]):
        os.truncate(damaged, damaged.stat().st_size // 2)
    intact = {path: path.stat().st_mtime_ns for index, path in enumerate(paths) if index not in (1, 3)}
    with caplog.at_level(logging.WARNING):
        again, again_spans, _, resumed = encode_in_chunks(encoder, plan.table, settings, work)
    warnings = [r.getMessage() for r in caplog.records if "[W403]" in r.getMessage()]
    assert len(warnings) == 2 and str(paths[1]) in warnings[0] and str(paths[3]) in warnings[1], warnings
    assert resumed == chunks - 2
    assert {path: path.stat().st_mtime_ns for path in intact} == intact  # reused, not written again
    np.testing.assert_array_equal(again, contexts)
    np.testing.assert_array_equal(again_spans, spans)
