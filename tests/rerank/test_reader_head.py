"""The reader's head: it starts as the plain dot product of the encoder's states, and learns at its own rate."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.model.reader import new_reader
from pipeline.rerank.training import new_training


def test_the_untrained_head_is_the_dot_product_of_the_encoders_states(tiny_encoder_dir: Path) -> None:
    reader, _ = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13)
    states = torch.randn(2, 5, reader.encoder.config.hidden_size)
    for projection in reader.head:
        assert torch.equal(projection(states), states)


def test_the_head_learns_at_its_own_rate_and_frozen_weights_not_at_all(tiny_encoder_dir: Path) -> None:
    reader, _ = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13)
    reader.encoder.embeddings.requires_grad_(False)
    state = new_training(reader, (2e-5, 1e-3), total_steps=100)
    encoder_group, head_group = state.optimizer.param_groups
    assert (encoder_group["initial_lr"], head_group["initial_lr"]) == (2e-5, 1e-3)
    head = {id(p) for p in reader.head.parameters()}
    assert {id(p) for p in head_group["params"]} == head
    trainable_encoder = {id(p) for p in reader.encoder.parameters() if p.requires_grad}
    assert {id(p) for p in encoder_group["params"]} == trainable_encoder
    assert not any(id(p) in trainable_encoder for p in reader.encoder.embeddings.parameters())
