"""A shallower reader (`[rerank] encoder_layers`): it keeps the starting encoder's lowest layers, saves and
loads at that depth, and scores after loading as before saving; settings past the encoder's depth are E203."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import ConfigError
from pipeline.model.reader import build_examples, load_reader, new_reader, save_reader, score_mentions
from pipeline.model.reader_inputs import Layout
from tests.rerank.test_reader_cast import LAYOUT, candidates


def test_a_one_layer_reader_saves_loads_and_scores_at_one_layer(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    reader, tokenizer = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13, layers=1)
    assert len(reader.encoder.encoder.layer) == 1  # the tiny encoder has 2
    assert reader.encoder.config.num_hidden_layers == 1
    save_reader(reader, tokenizer, tmp_path / "reader", {"layout": LAYOUT, "precision": "fp32"})
    loaded, _, _ = load_reader(tmp_path / "reader", torch.device("cpu"))
    assert len(loaded.encoder.encoder.layer) == 1

    examples = build_examples(tokenizer, *candidates(6), Layout(**LAYOUT))
    before = score_mentions(reader, examples, torch.device("cpu"), "fp32")["score"].to_numpy()
    after = score_mentions(loaded, examples, torch.device("cpu"), "fp32")["score"].to_numpy()
    np.testing.assert_allclose(after, before, atol=1e-6)

    full, _ = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13)
    whole = score_mentions(full, examples, torch.device("cpu"), "fp32")["score"].to_numpy()
    assert not np.allclose(whole, before)  # the dropped layer did count


def test_more_layers_than_the_encoder_has_is_refused(tiny_encoder_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"E203.*encoder_layers.*only 2 layers"):
        new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13, layers=3)


def test_freezing_more_layers_than_are_kept_is_refused() -> None:
    from pipeline.core.config import RerankConfig

    with pytest.raises(ConfigError, match=r"E203.*freeze_layers.*at most encoder_layers \(4\)"):
        RerankConfig(encoder_layers=4, freeze_layers=5)
    with pytest.raises(ConfigError, match=r"E203.*encoder_layers"):
        RerankConfig(encoder_layers=-1)
    # as with freeze_layers equal to the whole encoder's depth: only the head learns
    assert RerankConfig(encoder_layers=4, freeze_layers=4).encoder_layers == 4


@pytest.mark.parametrize("field", ["encoder_layers", "freeze_layers"])
def test_a_depth_past_the_encoder_is_refused_before_any_stage_runs(make_run_config, field: str) -> None:
    from click.testing import CliRunner

    from cli import main

    config = make_run_config(rerank={"enabled": True, field: 3})  # the tiny encoder has 2 layers
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert (
        f"[E203] {config}:" in result.output
        and f"{field} = 3 is invalid: the encoder has only 2 layers" in result.output
    )
    assert not (config.parent / "run" / "triage").exists()  # refused before triage


def test_the_setting_joins_rerank_s_key_only_when_set(make_run_config, monkeypatch) -> None:
    from pipeline.core.config_file import load_config
    from pipeline.rerank import stage
    from pipeline.rerank.stage import stage_identity

    monkeypatch.setattr(stage, "upstream_key", lambda out_dir, name: f"{name}-key")  # no upstream run needed

    for layers, keyed in ((0, False), (6, True)):
        config = load_config(make_run_config(rerank={"enabled": True, "encoder_layers": layers}))
        assert ("encoder_layers" in stage_identity(config)[1]) is keyed  # readers from before it keep their keys
