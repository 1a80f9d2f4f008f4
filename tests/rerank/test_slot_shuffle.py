"""Shuffled candidate slots: the reader cannot learn "the gold is in slot 1" from a ranker's order."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pipeline.core.distributed import World
from pipeline.model.reader import ReaderExamples
from pipeline.model.reader_inputs import Layout, Specials
from pipeline.rerank.training import Schedule, epoch_plan, labelled_batch

MARKS = Specials(cls=0, sep=2, pad=1, mention_start=10, mention_end=11, nil=12, entity=13)


def examples_with_the_gold_first(mentions: int = 40) -> ReaderExamples:
    """What a ranker trained on these mentions hands the reader: every gold in the first slot."""
    candidates = [[f"Q{m}-gold", f"Q{m}-b", f"Q{m}-c", f"Q{m}-d"] for m in range(mentions)]
    tokens = {kb_id: [100 + i] for i, kb_id in enumerate(k for row in candidates for k in row)}
    return ReaderExamples(
        mention_ids=[f"m{m}" for m in range(mentions)],
        contexts=[[10, 50, 11] for _ in range(mentions)],
        candidates=candidates,
        gold=[row[0] for row in candidates],
        entity_tokens=tokens,
        layout=Layout(max_seq_tokens=64, max_context_tokens=16, top_k=4),
        marks=MARKS,
    )


def epoch_labels(shuffle: bool, epoch: int = 1) -> list[int]:
    examples = examples_with_the_gold_first()
    plan = Schedule(batch_mentions=8, grad_accumulation=1, precision="fp32", seed=13, hidden_share=0.0)
    plan = dataclasses.replace(plan, shuffle_slots=shuffle)
    order, hidden, shuffles = epoch_plan(examples, np.arange(40), epoch, plan, World())
    readings, labels = labelled_batch(examples, order, hidden, shuffles, torch.device("cpu"))
    # The label is the gold's slot (1-based after NIL's 0) in the reading actually built.
    for reading, label, row in zip(readings, labels.tolist(), order):
        assert reading.kept[label - 1] == examples.gold[row]
    return labels.tolist()


def test_unshuffled_every_label_is_slot_one() -> None:
    assert set(epoch_labels(shuffle=False)) == {1}


def test_shuffled_the_gold_takes_every_slot_and_each_epoch_draws_anew() -> None:
    first, second = epoch_labels(shuffle=True, epoch=1), epoch_labels(shuffle=True, epoch=2)
    assert set(first) == {1, 2, 3, 4}
    assert max(first.count(slot) for slot in range(1, 5)) <= 20  # 40 mentions over 4 slots, none dominant
    assert first != second
    assert first == epoch_labels(shuffle=True, epoch=1)  # drawn from (seed, epoch): a resume trains the same


def test_shuffling_leaves_the_epoch_order_and_hidden_golds_as_they_were() -> None:
    examples = examples_with_the_gold_first()
    on = Schedule(batch_mentions=8, grad_accumulation=1, precision="fp32", seed=13, hidden_share=0.3)
    off = dataclasses.replace(on, shuffle_slots=False)
    order_on, hidden_on, _ = epoch_plan(examples, np.arange(40), 1, on, World())
    order_off, hidden_off, shuffles_off = epoch_plan(examples, np.arange(40), 1, off, World())
    assert shuffles_off is None
    assert order_on.tolist() == order_off.tolist() and hidden_on.tolist() == hidden_off.tolist()
