"""The ranker's learned NIL option (train.nil_candidate, after ReFinED) and the "nota" NIL method.

Hand-made vectors for the ranker and its training step; the demo data with the tiny
transformer for evaluate and link.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from conftest import invoke, run_demo_linker, write_jsonl
from pipeline.core.config import TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.model.features import RankerInputs, score_nil
from pipeline.model.model_file import MODEL, load_model, save_torch
from pipeline.model.nil import decide_nil
from pipeline.model.ranker import Ranker, RankerShape
from pipeline.train.batches import StepContext, TrainingMentions, assemble_batch, linking_accuracy, train_epoch
from pipeline.train.state import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "pipeline" / "demo_data"
WIDTH = 8


def shape(nil_candidate: bool) -> RankerShape:
    return RankerShape(
        features=("name", "context", "type"),
        vector_size=WIDTH,
        mention_types=2,
        entity_types=2,
        name_hidden=(16,),
        context_hidden=(16,),
        type_hidden=(4,),
        final_hidden=(16,),
        dropout=0.0,
        nil_candidate=nil_candidate,
    )


def toy_inputs(linked: int = 12, nil: int = 12, entities: int = 6, seed: int = 0) -> tuple[RankerInputs, np.ndarray]:
    """Mentions 0..linked-1 name entity `row % entities` (their vectors near its); the rest are NIL (random vectors).

    Returns the inputs and every mention's gold entity row (-1 for NIL).
    """
    generator = torch.Generator().manual_seed(seed)
    entity_vectors = torch.randn(entities, WIDTH, generator=generator)
    gold = np.array([i % entities for i in range(linked)] + [-1] * nil, dtype=np.int64)
    near = entity_vectors[torch.from_numpy(gold[:linked])] + 0.05 * torch.randn(linked, WIDTH, generator=generator)
    mention_vectors = torch.cat([near, 2.0 * torch.randn(nil, WIDTH, generator=generator)])
    count = linked + nil
    inputs = RankerInputs(
        mentions=pl.DataFrame({"mention_id": [f"m{i}" for i in range(count)], "row": np.arange(count)}),
        entity_ids=pl.DataFrame({"kb_id": [f"Q{i}" for i in range(entities)], "row": np.arange(entities)}),
        mention_name=mention_vectors,
        mention_context=mention_vectors.clone(),
        entity_name=entity_vectors,
        entity_context=entity_vectors.clone(),
        mention_type_onehot=torch.zeros(count, 2),
        entity_type_onehot=torch.zeros(entities, 2),
    )
    return inputs, gold


def toy_config(**changes) -> TrainConfig:
    return TrainConfig(
        features=("name", "context", "type"),
        name_hidden=(16,),
        context_hidden=(16,),
        type_hidden=(4,),
        final_hidden=(16,),
        dropout=0.0,
        learning_rate=1e-2,
        batch_mentions=8,
        negatives=4,
        **changes,
    )


# --- the head ---------------------------------------------------------------------------------


def test_nil_option_scores_each_mention_once_in_the_tanh_range() -> None:
    torch.manual_seed(0)
    ranker = Ranker(shape(True))
    inputs, _ = toy_inputs()
    batch = inputs.batch(torch.arange(5), torch.tensor([[0, 1, 2]] * 5))
    scores, nil_scores = ranker(*batch, with_nil=True)
    assert scores.shape == (5, 3) and nil_scores.shape == (5,)
    assert (nil_scores.abs() <= 1).all()
    assert torch.equal(ranker(*batch), scores)  # without with_nil: the candidates' scores alone
    assert score_nil(ranker, inputs, np.arange(5)).shape == (5,)


def test_without_the_option_the_ranker_is_as_before() -> None:
    """Same weights from the same seed (the option's are made last), no extra weights, no NIL scores."""
    torch.manual_seed(3)
    plain = Ranker(shape(False))
    torch.manual_seed(3)
    with_nil = Ranker(shape(True))
    extra = set(with_nil.state_dict()) - set(plain.state_dict())
    assert extra and all(key.startswith("nil_entity.") for key in extra)
    assert all(torch.equal(value, with_nil.state_dict()[key]) for key, value in plain.state_dict().items())
    assert score_nil(plain, toy_inputs()[0], np.arange(3)) is None
    with pytest.raises(ValueError, match="nil_candidate"):
        plain.nil_scores({"name": torch.zeros(1, WIDTH), "context": torch.zeros(1, WIDTH), "type": torch.zeros(1, 2)})


def test_a_model_saved_before_the_option_existed_loads_without_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ranker = Ranker(shape(False))
    old_shape = {k: v for k, v in dataclasses.asdict(shape(False)).items() if k != "nil_candidate"}
    save_torch(tmp_path / MODEL, {"model": ranker.state_dict(), "shape": old_shape, "config": {}})
    loaded, _ = load_model(tmp_path, torch.device("cpu"))
    assert loaded.has_nil is False
    # A checkpoint of such a run resumes under the new code (no E505 for the added field).
    save_torch(tmp_path / "last.pt", {"key": "k", "shape": old_shape})
    assert load_checkpoint(tmp_path / "last.pt", "k", shape(False)) is not None


def test_nil_candidate_is_checked() -> None:
    with pytest.raises(ConfigError, match="E203"):
        TrainConfig(nil_candidate=True, baseline="nn")


# --- training ---------------------------------------------------------------------------------


def test_nil_mentions_train_the_nil_option_up() -> None:
    inputs, gold = toy_inputs()
    rows = np.arange(len(gold))
    matrix = torch.tensor([[g % 6, (g + 1) % 6, (g + 2) % 6] for g in np.where(gold >= 0, gold, rows)])
    config = toy_config(nil_candidate=True)
    torch.manual_seed(0)
    ranker = Ranker(shape(True))
    optimizer = torch.optim.Adam(ranker.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(0)
    nil_rows = rows[gold < 0]

    def nil_lead() -> float:  # NIL mentions' NIL score minus their best candidate's, on average
        scores = ranker(*inputs.batch(torch.from_numpy(nil_rows), matrix[nil_rows]))
        return float((score_nil(ranker, inputs, nil_rows) - scores.max(dim=1).values.detach().numpy()).mean())

    before = nil_lead()
    accuracy_before = linking_accuracy(ranker, inputs, rows, matrix.numpy(), gold, gold < 0)
    for _ in range(40):
        train_epoch(
            ranker,
            optimizer,
            TrainingMentions(inputs, rows, matrix, torch.from_numpy(gold)),
            StepContext(config, generator, torch.device("cpu")),
        )
    assert nil_lead() > before + 0.5 and nil_lead() > 0
    accuracy = linking_accuracy(ranker, inputs, rows, matrix.numpy(), gold, gold < 0)
    assert accuracy > accuracy_before and accuracy >= 0.9


def test_the_nil_option_is_every_linked_mentions_extra_negative_and_nil_mentions_have_none() -> None:
    inputs, gold = toy_inputs(linked=4, nil=2)
    matrix = torch.tensor([[0, 1, 2]] * 6)
    batch, mask, _ = assemble_batch(
        TrainingMentions(inputs, np.arange(6), matrix, torch.from_numpy(gold)),
        torch.arange(6),
        StepContext(toy_config(nil_candidate=True), torch.Generator().manual_seed(0), torch.device("cpu")),
    )
    assert mask.shape == (6, 4 + 1) and mask[:, -1].tolist() == [True] * 4 + [False] * 2
    assert batch[2].shape == (6, 1 + 4)


def test_without_nil_mentions_the_option_draws_the_same_batches() -> None:
    """The option adds a column to the mask and nothing to the draws: on linked mentions alone the
    generator walks exactly as without it (the off setting's reproducibility tests cover the rest)."""
    inputs, gold = toy_inputs(linked=12, nil=0)
    rows = np.arange(12)
    matrix = torch.tensor([[g, (g + 1) % 6, (g + 2) % 6] for g in gold])
    states = []
    for nil_candidate in (False, True):
        torch.manual_seed(0)
        ranker = Ranker(shape(nil_candidate))
        generator = torch.Generator().manual_seed(5)
        train_epoch(
            ranker,
            torch.optim.Adam(ranker.parameters()),
            TrainingMentions(inputs, rows, matrix, torch.from_numpy(gold)),
            StepContext(toy_config(nil_candidate=nil_candidate), generator, torch.device("cpu")),
        )
        states.append(generator.get_state())
    assert torch.equal(states[0], states[1])


# --- evaluate and link ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nota_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    folder = tmp_path_factory.mktemp("nota-run")
    config, output = run_demo_linker(
        folder, tiny_encoder_dir, train={"nil_candidate": True}, evaluate={"nil_method": "nota"}
    )
    records = [json.loads(line) for line in (DEMO / "mentions.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [
        {k: v for k, v in r.items() if k not in ("gold_kb_id", "split")} for r in records if r.get("split") == "test"
    ]
    return {
        "run_dir": folder / "run",
        "model": folder / "run" / "model",
        "config": config,
        "test": write_jsonl(folder / "test-no-gold.jsonl", test),
        "output": output,
    }


def test_evaluate_reports_nota_beside_the_other_methods_and_decides_by_it(nota_run: dict) -> None:
    evaluate_dir = nota_run["run_dir"] / "evaluate"
    metrics = json.loads((evaluate_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["nil_method"] == "nota"
    assert {row["method"] for row in metrics["nil_methods"]} >= {"threshold", "nota"}
    assert "| test | nota | all |" in (evaluate_dir / "report.md").read_text(encoding="utf-8")
    # What decides is the NIL option, not a threshold: said so alike in the summary, metrics.json and report.md.
    assert "evaluate: test split, NIL decided by the ranker's NIL option, nota (" in nota_run["output"]
    assert "NIL thresholds" not in nota_run["output"] and metrics["thresholds"] is None
    assert metrics["nil_decided_by"].startswith("the ranker's NIL option, nota")
    assert f"NIL is decided by **{metrics['nil_decided_by']}**" in (evaluate_dir / "report.md").read_text(
        encoding="utf-8"
    )
    # Ties of the best two candidates, counted over the evaluated mentions, in metrics and the report.
    from pipeline.model.ties import tied_best

    evaluated = pl.read_parquet(evaluate_dir / "predictions.parquet").filter(
        (pl.col("split") == "test") & pl.col("gold_kb_id").is_not_null()
    )
    assert metrics["tied_best"] == tied_best(evaluated) and metrics["tied_best"]["mentions"] > 0
    assert f"for {metrics['tied_best']['tied']} of {metrics['tied_best']['mentions']} mentions with a runner-up" in (
        evaluate_dir / "report.md"
    ).read_text(encoding="utf-8")
    # The saved decisions are nota's: NIL exactly where the NIL score beats the best candidate.
    predictions = pl.read_parquet(evaluate_dir / "predictions.parquet")
    nil = json.loads((evaluate_dir / "nil.json").read_text(encoding="utf-8"))
    model, _ = load_model(nota_run["run_dir"] / "train", torch.device("cpu"))
    assert model.has_nil and nil["method"] == "nota"
    assert json.loads((nota_run["model"] / "model.json").read_text(encoding="utf-8"))["nil"]["method"] == "nota"
    expected = predictions["best_kb_id"].is_null() | (predictions["nil_score"] > predictions["best_score"]).fill_null(
        False
    )
    assert predictions["is_nil"].to_list() == expected.to_list()


def test_link_decides_nil_by_nota_as_evaluate_did(nota_run: dict, tmp_path: Path, monkeypatch) -> None:
    from pipeline.formats.tac import read_tab

    monkeypatch.setenv("XEL_CACHE", str(tmp_path / "cache"))
    result = invoke("link", "--model", nota_run["model"], "--mentions", nota_run["test"], "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output + repr(result.exception)
    evaluated = read_tab(nota_run["run_dir"] / "evaluate" / "system.tab")
    linked = read_tab(tmp_path / "out" / "system.tab")
    both = evaluated.join(linked, on="mention_id", suffix="_link")
    assert both.height == evaluated.height == 66
    is_nil, is_nil_link = both["kb_id"].str.starts_with("NIL"), both["kb_id_link"].str.starts_with("NIL")
    assert is_nil.to_list() == is_nil_link.to_list()
    assert both.filter(~is_nil)["kb_id"].to_list() == both.filter(~is_nil)["kb_id_link"].to_list()


def test_nota_for_a_model_without_the_option_is_a_config_error() -> None:
    from pipeline.core.config import EvaluateConfig
    from pipeline.evaluate.nil_choice import choose

    tuning = pl.DataFrame(
        {"mention_id": ["a"], "lang": ["en"], "best_kb_id": ["Q1"], "best_score": [0.1], "gold_kb_id": ["Q1"]}
    )
    with pytest.raises(ConfigError, match="E203.*nil_candidate"):
        choose(tuning, EvaluateConfig(nil_method="nota"), ["en"], seed=0)


def test_the_classifier_reads_the_nil_score_when_there_is_one() -> None:
    from pipeline.model import nil_classifier

    rng = np.random.default_rng(0)
    size = 60
    gold_nil = np.arange(size) % 3 == 0
    table = pl.DataFrame(
        {
            "mention_id": [f"m{i}" for i in range(size)],
            "mention": ["x"] * size,
            "best_kb_id": ["Q1"] * size,
            "best_score": rng.uniform(-1, 1, size),
            "second_score": rng.uniform(-1, 0, size),
            "gold_kb_id": np.where(gold_nil, "NIL", np.where(np.arange(size) % 3 == 1, "Q1", "Q2")).tolist(),
            "nil_score": np.where(gold_nil, 0.9, -0.9),
        }
    )
    table = nil_classifier.add_evidence(
        table,
        pl.DataFrame(
            schema={
                "mention_id": pl.String,
                "rank": pl.Int32,
                "kb_id": pl.String,
                "score": pl.Float64,
                "sources": pl.List(pl.String),
            }
        ),
    )
    params = nil_classifier.fit(table)
    assert params["features"][-2:] == ["nil_score", "best_minus_nil"]
    assert nil_classifier.says_nil(params, table).tolist() == gold_nil.tolist()
    without = nil_classifier.fit(table.drop("nil_score"))
    assert "nil_score" not in without["features"]


def test_nota_without_nil_scores_is_refused() -> None:
    table = pl.DataFrame({"lang": ["en"], "best_kb_id": ["Q1"], "best_score": [0.1]})
    artifact = {"method": "nota", "thresholds": {"en": -1.0}, "default_threshold": -1.0, "classifier": None}
    with pytest.raises(ValueError, match="nil_candidate"):
        decide_nil(table, artifact)
    scored = table.with_columns(pl.Series("nil_score", [0.2]))
    assert decide_nil(scored, artifact)["is_nil"].to_list() == [True]
    assert decide_nil(scored.with_columns(pl.lit(0.1).alias("nil_score")), artifact)["is_nil"].to_list() == [False]
