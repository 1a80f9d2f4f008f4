"""The paper's training settings: Mono, Multi, MultiDS, zero-shot, the nearest-neighbour
baseline and popularity re-ranking (§7.2).

Data selection and re-ranking are checked on hand-made tables; each setting is also run
end to end with the CLI on the tiny inputs (one triage + encode per module, copied).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner, Result

from cli import main
from conftest import TINY_KB, tiny_mention_records, write_jsonl, write_run_config
from conftest import invoke as cli_invoke
from pipeline.core.config_file import build_config
from pipeline.core.errors import ConfigError
from pipeline.core.manifest import read_manifest
from pipeline.model.predict import candidate_order, predict
from pipeline.train.stage import training_rows

# --- which mentions are trained on ------------------------------------------------------------

# row, split, lang, gold entity row (-1: NIL or not encoded)
SELECTION_ROWS = [
    (0, "train", "en", 0),
    (1, "train", "en", 1),
    (2, "train", "en", -1),
    (3, "dev", "en", 2),
    (4, "train", "es", 2),
    (5, "train", "es", 3),
    (6, "test", "es", 1),
    (7, "train", "zh", 4),
    (8, "train", "zh", 0),
    (9, "train", "zh", 1),
    (10, "train", "zh", 2),
]


def selection_table() -> tuple[pl.DataFrame, np.ndarray]:
    table = pl.DataFrame([r[:3] for r in SELECTION_ROWS], schema=["row", "split", "lang"], orient="row")
    return table, np.array([r[3] for r in SELECTION_ROWS])


@pytest.mark.parametrize(
    ("languages", "expected"),
    [
        ((), [0, 1, 4, 5, 7, 8, 9, 10]),  # Multi: every language's training mentions with a gold entity
        (("en",), [0, 1]),  # Mono
        (("es", "zh"), [4, 5, 7, 8, 9, 10]),  # zero-shot for en: train on the others
        (("ar",), []),
    ],
)
def test_training_rows_by_language(languages, expected) -> None:
    mentions, gold = selection_table()
    assert training_rows(mentions, gold, languages, "", seed=13).tolist() == expected


def test_multids_downsamples_to_the_languages_size_deterministically() -> None:
    mentions, gold = selection_table()
    multi = training_rows(mentions, gold, (), "", seed=13)
    by_seed = {seed: training_rows(mentions, gold, (), "es", seed).tolist() for seed in range(20)}
    for rows in by_seed.values():
        assert len(rows) == 2  # es has two training mentions with a gold entity
        assert rows == sorted(rows) and set(rows) <= set(multi.tolist())
    assert training_rows(mentions, gold, (), "es", seed=3).tolist() == by_seed[3]  # same seed, same subset
    assert len({tuple(rows) for rows in by_seed.values()}) > 1  # the seed decides which
    # zh has 4 such mentions: down-sampling en + es (4 mentions) to it keeps them all.
    assert training_rows(mentions, gold, ("en", "es"), "zh", seed=13).tolist() == [0, 1, 4, 5]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "baseline", "knn"),
        ("train", "train_languages", ["en", ""]),
        ("evaluate", "languages", [""]),
        ("train", "weight_average", 1.0),
        ("train", "weight_average", -0.1),
        ("evaluate", "nil_method", "both"),
        ("train", "pair_input", "sum"),
    ],
)
def test_bad_settings_are_e203(section: str, key: str, value) -> None:
    raw = {"inputs": {"kb": "kb.jsonl", "mentions": "m.jsonl"}, section: {key: value}}
    with pytest.raises(ConfigError, match=rf"E203.*{key}"):
        build_config(raw, source=None, base=Path.cwd())


# --- popularity re-ranking (§7.2) -------------------------------------------------------------


def test_popularity_reranks_the_top_ten_stably() -> None:
    # Entity rows 0..11; training-gold counts per entity row.
    popularity = np.array([0, 5, 0, 2, 2, 9, 0, 0, 0, 0, 0, 0])
    matrix = np.array(
        [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # 12 candidates: only the ten best-scored are re-ranked
            [2, 3, 4, -1, -1, -1, -1, -1, -1, -1, -1, -1],  # padded
            [6, 7, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1],  # none seen in training: score order kept
        ]
    )
    scores = np.full(matrix.shape, np.nan)
    scores[0] = [0.9, 0.8, 0.7, 0.6, 0.65, -0.5, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4]
    scores[1, :3] = [0.1, 0.3, 0.2]
    scores[2, :3] = [0.2, 0.4, 0.4]
    plain = candidate_order(scores, matrix)
    reranked = candidate_order(scores, matrix, popularity)
    # Row 0 by score: 0 1 2 4 3 6 7 8 9 10 | 11 5 (entity 5 scores 11th: outside the top ten).
    assert matrix[0, plain[0]].tolist() == [0, 1, 2, 4, 3, 6, 7, 8, 9, 10, 11, 5]
    # By count 1 (5), then 4 and 3 (2 each, in score order: 4 scored 0.65 > 0.6), then the zeros in score order.
    assert matrix[0, reranked[0]].tolist() == [1, 4, 3, 0, 2, 6, 7, 8, 9, 10, 11, 5]
    assert matrix[1, reranked[1]][:3].tolist() == [3, 4, 2] and (matrix[1, reranked[1]][3:] == -1).all()
    assert matrix[2, reranked[2]][:3].tolist() == [7, 8, 6]  # ties (0.4, 0.4) keep triage order

    mentions = pl.DataFrame({"mention_id": ["a", "b", "c"]})
    entity_ids = [f"Q{i}" for i in range(12)]
    _, predictions = predict(mentions, np.arange(3), matrix, scores, entity_ids, popularity)
    assert predictions["best_kb_id"].to_list() == ["Q1", "Q3", "Q7"]
    # The NIL threshold sees the re-ranked first candidate's own score.
    assert predictions["best_score"].to_list() == pytest.approx([0.8, 0.3, 0.4])
    assert predictions["second_kb_id"].to_list() == ["Q4", "Q4", "Q8"]
    _, unchanged = predict(mentions, np.arange(3), matrix, scores, entity_ids)
    assert unchanged["best_kb_id"].to_list() == ["Q0", "Q3", "Q7"]


# --- end to end ---------------------------------------------------------------------------------

TRAIN_IDS = {r["id"] for r in tiny_mention_records() if r["split"] == "train" and r["gold_kb_id"] != "NIL"}


# Every call here is expected to succeed.
invoke = functools.partial(cli_invoke, exit_code=0)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    folder = tmp_path_factory.mktemp("settings-run")
    config = write_run_config(folder, tiny_encoder_dir)
    invoke("run", "--config", config)
    return {"config": config, "run_dir": folder / "run"}


def run_with(base_run: dict, run_dir: Path, *overrides: str) -> Result:
    return invoke(
        "run",
        "--config",
        base_run["config"],
        "--run-dir",
        run_dir,
        *[part for text in overrides for part in ("--set", text)],
    )


def trained_ids(run_dir: Path) -> list[str]:
    return torch.load(run_dir / "train" / "model.pt", map_location="cpu", weights_only=False)["train_mention_ids"]


def test_multi_trains_on_every_language(base_run: dict) -> None:
    assert set(trained_ids(base_run["run_dir"])) == TRAIN_IDS  # en-1..3, es-1, ru-1 (en-4 is NIL)
    manifest = read_manifest(base_run["run_dir"] / "train")
    assert manifest["train_mentions_by_language"] == {"en": 3, "es": 1, "ru": 1}


def test_mono_multids_and_zero_shot_end_to_end(base_run: dict, run_copy: Path) -> None:
    run_with(base_run, run_copy, "train.train_languages=en")
    assert set(trained_ids(run_copy)) == {"en-1", "en-2", "en-3"}

    run_with(base_run, run_copy, "train.downsample_to_language=es")
    first = trained_ids(run_copy)
    assert len(first) == 1 and set(first) <= TRAIN_IDS
    invoke(
        "train",
        "--config",
        base_run["config"],
        "--run-dir",
        run_copy,
        "--set",
        "train.downsample_to_language=es",
        "--force",
    )
    assert trained_ids(run_copy) == first

    # Zero-shot: train on English, score Spanish and Russian only.
    run_with(base_run, run_copy, "train.train_languages=en", "evaluate.languages=es,ru")
    metrics = json.loads((run_copy / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["by_language"]) == {"es", "ru"}
    system = (run_copy / "evaluate" / "system.tab").read_text(encoding="utf-8")
    assert "en-d" not in system and "es-d3" in system


def test_nn_baseline_scores_are_the_cosine_and_need_no_training(base_run: dict, run_copy: Path) -> None:
    # No language has training mentions here: the baseline does not need any.
    result = run_with(base_run, run_copy, "train.baseline=nn", "train.train_languages=xx")
    assert "train: done" in result.output
    train_dir = run_copy / "train"
    saved = torch.load(train_dir / "model.pt", map_location="cpu", weights_only=False)
    assert saved["baseline"] == "nn" and saved["model"] == {} and saved["train_mention_ids"] == []
    assert pl.read_parquet(train_dir / "history.parquet").is_empty()

    with h5py.File(run_copy / "encode" / "vectors.h5", "r") as handle:
        mention_ids = [v.decode() for v in handle["mentions/id"][:]]
        entity_ids = [v.decode() for v in handle["entities/id"][:]]
        mention_name = handle["mentions/name"][:].astype(np.float64)
        entity_name = handle["entities/name"][:].astype(np.float64)
    mention_row = {m: i for i, m in enumerate(mention_ids)}
    entity_row = {e: i for i, e in enumerate(entity_ids)}
    scores = pl.read_parquet(run_copy / "evaluate" / "scores.parquet")
    assert scores.height > 0
    m = mention_name[[mention_row[i] for i in scores["mention_id"]]]
    e = entity_name[[entity_row[i] for i in scores["kb_id"]]]
    cosine = (m * e).sum(1) / np.linalg.norm(m, axis=1) / np.linalg.norm(e, axis=1)
    np.testing.assert_allclose(scores["score"].to_numpy(), cosine, atol=1e-5)
    predictions = pl.read_parquet(run_copy / "evaluate" / "predictions.parquet")
    assert predictions["best_score"].drop_nulls().is_between(-1, 1).all()


def test_popularity_rerank_changes_evaluate_only(base_run: dict, run_copy: Path) -> None:
    result = run_with(base_run, run_copy, "evaluate.popularity_rerank=true")
    assert "train: up to date" in result.output and "evaluate: done" in result.output
    # Back to the defaults: the new settings at their defaults leave the original keys.
    manifest = read_manifest(base_run["run_dir"] / "evaluate")
    assert "popularity_rerank" not in manifest["settings"] and "languages" not in manifest["settings"]


def test_feature_ablations_train_only_their_pair_mlps(base_run: dict, run_copy: Path) -> None:
    for features, pair_mlps in (("name", {"name_pair"}), ("name,context", {"name_pair", "context_pair"})):
        run_with(base_run, run_copy, f"train.features={features}")
        saved = torch.load(run_copy / "train" / "model.pt", map_location="cpu", weights_only=False)
        assert saved["shape"]["features"] == tuple(features.split(","))
        assert {key.split(".")[1] for key in saved["model"] if key.startswith("pair_mlps.")} == pair_mlps
        assert (run_copy / "evaluate" / "metrics.json").is_file()


# --- behaviour fixes (issue 11 item 7) ----------------------------------------------------------


def test_checkpoint_of_another_architecture_is_refused_with_e505(
    base_run: dict, run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.train.stage as train_stage

    # A finished train deletes its checkpoint: keep this one, as a run killed before its manifest would.
    monkeypatch.setattr(train_stage, "discard_checkpoint", lambda path: None)
    invoke("train", "--config", base_run["config"], "--run-dir", run_copy, "--force")
    monkeypatch.undo()
    checkpoint_path = run_copy / "train" / "checkpoints" / "last.pt"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    checkpoint["shape"] = {**checkpoint["shape"], "name_hidden": [7]}  # same key, other layer sizes
    torch.save(checkpoint, checkpoint_path)
    (run_copy / "train" / "manifest.json").unlink()
    result = CliRunner().invoke(main, ["train", "--config", str(base_run["config"]), "--run-dir", str(run_copy)])
    assert result.exit_code == 2, result.output
    assert "[E505]" in result.output and "checkpoint of another ranker architecture" in result.output
    assert "differs in name_hidden" in result.output
    # --force starts over instead.
    invoke("train", "--config", base_run["config"], "--run-dir", run_copy, "--force")


def test_without_dev_mentions_best_dev_accuracy_is_null(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    records = [{**r, "split": "train" if r["split"] == "dev" else r["split"]} for r in tiny_mention_records()]
    data = {
        "mentions": write_jsonl(tmp_path / "data" / "mentions.jsonl", records),
        "kb": write_jsonl(tmp_path / "data" / "kb.jsonl", TINY_KB),
    }
    config = write_run_config(tmp_path, tiny_encoder_dir, data=data, evaluate={"threshold_mode": "fixed"})
    result = invoke("run", "--config", config)
    assert "train: no dev mentions; best epoch by training loss" in result.output
    assert "[W501] no dev mention" in result.output  # the log (stderr) is part of CliRunner's output
    assert read_manifest(tmp_path / "run" / "train")["best_dev_accuracy"] is None


# --- a collapsed ranker (issue 21 item 11) -------------------------------------------------------


def test_a_ranker_that_scores_every_candidate_alike_is_w503_and_reports_no_dev_accuracy(
    base_run: dict, run_copy: Path
) -> None:
    # Types alone, and no type seen 1000 times: every type is dropped, so every (mention, entity)
    # pair reads the same all-zero input and gets one score, whatever the weights (and without
    # dropout, one score in training too: the loss is the margin at every step).
    result = invoke(
        "train",
        "--config",
        base_run["config"],
        "--run-dir",
        run_copy,
        "--set",
        "train.features=type",
        "--set",
        "train.min_type_count=1000",
        "--set",
        "train.dropout=0",
    )
    # Every dev mention with a runner-up: n of n.
    assert re.search(
        r"\[W503\] the ranker did not learn to rank: it gives all candidates one score for (\d+) of \1 dev",
        result.output,
    )
    assert "the training loss stayed at the margin (1) for the last 3 epochs" in result.output
    assert "lower train.learning_rate" in result.output
    assert "train: best dev linking accuracy n/a: ties decided it (" in result.output
    manifest = read_manifest(run_copy / "train")
    assert manifest["best_dev_accuracy"] is None
    assert manifest["dev_accuracy_by_ties"] is not None and "one score" in manifest["ranker_collapse"]
    losses = pl.read_parquet(run_copy / "train" / "history.parquet")["loss"].to_list()
    assert losses == [1.0] * len(losses)


@pytest.mark.parametrize(("constant", "collapsed"), [(56, True), (50, False)])
def test_a_ranker_scoring_nearly_every_dev_mention_alike_has_collapsed(constant: int, collapsed: bool) -> None:
    from pipeline.train.collapse import COLLAPSE_FIX, diagnose

    # The demo with features name,context,type: 56 of 57 dev mentions, one score each (a dead last layer).
    ties = {
        "tied": constant,
        "mentions": 57,
        "share": constant / 57,
        "saturated": 0,
        "constant": constant,
        "constant_score": -0.1838,
    }
    found = diagnose(ties, [0.95, 0.92, 0.91], margin=1.0)
    assert found is not None and (found.fix == COLLAPSE_FIX) is collapsed


@pytest.mark.parametrize(("accuracy", "warned"), [(0.083, True), (0.75, False), (0.9, False)])
def test_a_ranker_far_below_triage_first_candidate_is_w504(accuracy: float, warned: bool, caplog) -> None:
    """Replay B5: a ranker trained one epoch linked 0.083 of dev where triage's first candidate was right for
    0.8, and train said nothing."""
    from pipeline.train.collapse import check_below_triage

    # Ten dev mentions: triage's first candidate is the gold for eight, one gold is second, one is NIL (-1).
    matrix = np.array([[i, i + 100] for i in range(8)] + [[50, 8], [60, 61]])
    gold = np.array([*range(8), 8, -1])
    with caplog.at_level("WARNING"):
        assert check_below_triage(accuracy, matrix, gold) == 0.8
    assert ("[W504]" in caplog.text) is warned, caplog.text
    assert check_below_triage(None, matrix, gold) is None  # no dev accuracy (no dev mention): nothing to compare


def test_a_ranker_that_learned_keeps_its_dev_accuracy(base_run: dict) -> None:
    manifest = read_manifest(base_run["run_dir"] / "train")
    assert manifest["best_dev_accuracy"] is not None and "dev_accuracy_by_ties" not in manifest


@pytest.mark.parametrize(
    ("losses", "stuck"),
    [([0.9, 1.0, 1.0, 1.0], True), ([1.0, 1.0], False), ([1.0, 1.0, 0.98], False), ([0.5, 0.4, 0.3], False)],
)
def test_loss_stuck_at_the_margin(losses: list[float], stuck: bool) -> None:
    from pipeline.train.collapse import loss_stuck_at_margin

    assert loss_stuck_at_margin(losses, margin=1.0) is stuck


def test_score_matrix_ties_counts_constant_and_tied_mentions() -> None:
    from pipeline.model.ties import score_matrix_ties

    nan = float("nan")
    scores = np.array([[0.2, 0.2, 0.2], [0.5, 0.5, 0.1], [0.9, 0.1, nan], [0.3, nan, nan]], dtype=np.float32)
    ties = score_matrix_ties(scores)
    assert (ties["mentions"], ties["tied"], ties["constant"]) == (3, 2, 1)  # the last has no runner-up
    assert ties["constant_score"] == pytest.approx(0.2)
