"""Mention vectors pool the mention's own sub-words at every length around the context window.

Issue 13 item 1: with `max_context_tokens = 16`, a mention of 19 sub-words crashed encode
(an empty max-pool), and mentions a little longer than the window pooled the `[CLS]`
token or only their last sub-words. The rule (`pipeline.encoders.encoder.mention_window`): the span
holds min(mention length, window) of the mention's own sub-words, its middle ones when it
does not fit, and never a special token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.core.config import EncoderConfig
from pipeline.encoders.encoder import forward_units, load_encoder, mention_window
from pipeline.encoders.plan import UnitTable, plan_mentions

MAX_CONTEXT_TOKENS = 16
BODY = MAX_CONTEXT_TOKENS - 2  # [CLS] ... [SEP]
WORDS = ["Paris", "Berlin", "Moscow", "Madrid"]


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir: Path):
    torch.manual_seed(0)
    return load_encoder(
        EncoderConfig(name=str(tiny_encoder_dir), max_context_tokens=MAX_CONTEXT_TOKENS, device="cpu", precision="fp32")
    )


def one_token_words(encoder) -> list[str]:
    words = [w for w in WORDS if len(encoder.tokenizer.tokenize(w)) == 1]
    assert len(words) >= 2, "the tiny vocabulary should hold some city names whole"
    return words


@pytest.mark.parametrize("lengths", [range(1, 3 * MAX_CONTEXT_TOKENS)])
@pytest.mark.parametrize("padding", [0, 3, 30])
def test_every_mention_length_pools_its_own_sub_words(encoder, lengths, padding: int) -> None:
    words = one_token_words(encoder)
    rows = []
    for n in lengths:
        mention = " ".join(words[i % len(words)] for i in range(n))
        before = " ".join(["Rome"] * padding)
        text = (before + " " if before else "") + mention + (" " + before if before else "")
        start = len(before) + 1 if before else 0
        rows.append({"mention_id": f"m{n}", "context": text, "start": start, "end": start + len(mention), "n": n})
    mentions = pl.DataFrame(rows)
    table = UnitTable()
    units, span_rows = plan_mentions(mentions, encoder, table, MAX_CONTEXT_TOKENS, 0)
    specials = set(encoder.tokenizer.all_special_ids)
    for row, n in enumerate(mentions["n"].to_list()):
        mention_ids = encoder.tokenizer(" ".join(words[i % len(words)] for i in range(n)), add_special_tokens=False)[
            "input_ids"
        ]
        assert len(mention_ids) == n
        unit = table.units[units[row]]
        ((out_row, first, last),) = [s for s in table.spans[units[row]] if s[0] == span_rows[row]]
        pooled = unit[first:last].tolist()
        assert len(unit) <= MAX_CONTEXT_TOKENS
        assert not specials & set(pooled), (n, padding)
        expected_start = max(n - BODY, 0) // 2  # the middle sub-words when the mention is longer
        assert pooled == mention_ids[expected_start : expected_start + min(n, BODY)], (n, padding)
    # Encoding them works and each vector is the max over exactly those positions.
    context_vectors, span_vectors = forward_units(encoder, table.units, table.spans, 1, batch_tokens=256)
    for unit_index, spans in enumerate(table.spans):
        ids = torch.as_tensor(table.units[unit_index])[None]
        with torch.inference_mode():
            low = encoder.model(input_ids=ids, output_hidden_states=True).hidden_states[1][0]
        for out_row, first, last in spans:
            np.testing.assert_allclose(span_vectors[out_row], low[first:last].amax(dim=0).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_tokens", [1, 5, 14, 15, 40])
def test_mention_window_contains_the_span_for_every_position(n_tokens: int) -> None:
    for first in range(n_tokens):
        for last in range(first + 1, n_tokens + 1):
            window_start, span_first, span_last = mention_window(n_tokens, first, last, BODY)
            width = min(n_tokens, BODY)
            assert 0 <= window_start <= max(n_tokens - BODY, 0)
            assert 0 <= span_first < span_last <= width
            assert span_last - span_first == min(last - first, BODY)
            absolute = window_start + span_first
            assert first <= absolute and absolute + (span_last - span_first) <= last
