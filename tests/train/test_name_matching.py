"""The name-matching auxiliary loss (paper §7.1): the pairs file, its vectors, the loss and what is kept.

Pairs are foreign/English names of the tiny KB's entities (its aliases and the tiny
mentions' strings); the run is the tiny pipeline with the tiny random encoder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import torch
from click.testing import Result

from conftest import invoke as cli_invoke
from conftest import write_run_config
from pipeline.core.config_file import build_config
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.manifest import read_manifest
from pipeline.formats.name_pairs import read_name_pairs
from pipeline.model.ranker import NameMatching, Ranker, RankerShape

PAIRS = [
    ("Барак Обама", "Barack Obama", "ru"),
    ("奥巴马", "Barack Obama", "zh"),
    ("Москва", "Moscow", "ru"),
    ("Москве", "Moscow", "ru"),
    ("París", "Paris", "es"),
    ("Париже", "Paris", "ru"),
    ("Naciones Unidas", "United Nations", "es"),
    ("Ангелой Меркель", "Angela Merkel", "ru"),
    ("Berlín", "Berlin", "es"),
    ("Берлине", "Berlin", "ru"),
]
# Large enough steps for 10 pairs to be learnt in a few seconds (LEARNING_EPOCHS of them); no
# dropout, so a rerun is the same run. Tests that need no learning keep to 6 epochs.
TRAIN = {
    "dropout": 0.0,
    "learning_rate": 0.003,
    "batch_mentions": 2,
    "epochs": 6,
    "name_hidden": [64],
    "eval_every": 2,
    "checkpoint_every": 2,
    "name_pair_negatives": 3,
}
LEARNING_EPOCHS = 60


def write_pairs(path: Path, pairs=PAIRS, header: bool = True) -> Path:
    lines = (["foreign\tenglish\tlang"] if header else []) + ["\t".join(pair) for pair in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Calls here expect success unless they say otherwise.
invoke = functools.partial(cli_invoke, exit_code=0)


def model_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "train" / "model.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    """The tiny run without pairs; `pairs` is a pairs file next to it."""
    folder = tmp_path_factory.mktemp("name-matching")
    config = write_run_config(folder, tiny_encoder_dir, train=TRAIN)
    invoke("run", "--config", config)
    return {"config": config, "run_dir": folder / "run", "pairs": write_pairs(folder / "pairs.tsv")}


def with_pairs(
    base_run: dict,
    run_dir: Path,
    command: str = "run",
    *overrides: str,
    pairs: Path | None = None,
    exit_code: int = 0,
    force: bool = False,
) -> Result:
    settings = [f"train.name_pairs={pairs or base_run['pairs']}", *overrides]
    return invoke(
        command,
        "--config",
        base_run["config"],
        "--run-dir",
        run_dir,
        *(["--force"] if force else []),
        *[part for text in settings for part in ("--set", text)],
        exit_code=exit_code,
    )


# --- the pairs file ---------------------------------------------------------------------------


def test_read_name_pairs_tsv_and_jsonl(tmp_path: Path) -> None:
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes("\ufeffforeign\tenglish\r\n奥巴马\tBarack Obama\tzh\r\n\r\n París \tParis\r\n".encode())
    table = read_name_pairs(tsv)
    assert table.rows() == [(2, "奥巴马", "Barack Obama", "zh"), (4, "París", "Paris", None)]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        '{"foreign": "Москва", "english": "Moscow", "lang": "ru"}\n{"foreign": "París", "english": "Paris"}\n',
        encoding="utf-8",
    )
    assert read_name_pairs(jsonl).rows() == [(1, "Москва", "Moscow", "ru"), (2, "París", "Paris", None)]


@pytest.mark.parametrize(
    ("name", "content", "code", "line"),
    [
        ("one-column.tsv", "奥巴马\tBarack Obama\nМосква\n", "E113", 2),
        ("four-columns.tsv", "a\tb\tc\td\n", "E113", 1),
        ("empty-english.tsv", "foreign\tenglish\nParís\t \n", "E113", 2),
        ("empty.tsv", "\n\n", "E107", None),
        ("header-only.tsv", "foreign\tenglish\tlang\n", "E107", None),
        ("latin1.tsv", "Par\xeds\tParis\n".encode("latin-1"), "E110", 1),
        ("missing-english.jsonl", '{"foreign": "París", "english": "Paris"}\n{"foreign": "Москва"}\n', "E102", 2),
        ("number.jsonl", '{"foreign": "París", "english": 7}\n', "E103", 1),
        ("broken.jsonl", '{"foreign": "París", "english": "Paris"\n', "E101", 1),
        ("blank-name.jsonl", '{"foreign": " ", "english": "Paris"}\n', "E113", 1),
    ],
)
def test_malformed_pairs_files_name_the_file_and_line(tmp_path: Path, name: str, content, code: str, line) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=code) as raised:
        read_name_pairs(path)
    assert f"{path}:{line}:" in raised.value.message if line else f"{path}:" in raised.value.message


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"name_pairs": "pairs.csv"}, "name_pairs"),
        ({"name_pairs": "pairs.tsv", "features": ["context", "type"]}, "name_pairs"),
        ({"name_pairs": "pairs.tsv", "baseline": "nn"}, "name_pairs"),
        ({"name_pair_weight": -0.5}, "name_pair_weight"),
        ({"name_pair_negatives": 0}, "name_pair_negatives"),
    ],
)
def test_bad_name_pair_settings_are_e203(values: dict, field: str) -> None:
    raw = {"inputs": {"kb": "kb.jsonl", "mentions": "m.jsonl"}, "train": values}
    with pytest.raises(ConfigError, match=rf"E203.*{field}"):
        build_config(raw, source=None, base=Path.cwd())


def test_a_malformed_pairs_file_stops_the_run_with_one_coded_line(
    base_run: dict, run_copy: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("foreign\tenglish\n奥巴马\tBarack Obama\nМосква Moscow\n", encoding="utf-8")
    before = model_weights(run_copy)
    result = with_pairs(base_run, run_copy, pairs=bad, exit_code=2)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: [E113] {bad}:3: expected 2 or 3 tab-separated columns")
    assert "Traceback" not in result.output
    assert all(torch.equal(before[k], v) for k, v in model_weights(run_copy).items())  # nothing lost
    missing = tmp_path / "missing.tsv"
    assert f"[E108] {missing}" in with_pairs(base_run, run_copy, "train", pairs=missing, exit_code=2).output


# --- the model ----------------------------------------------------------------------------------


def test_name_scores_use_the_rankers_name_mlp_and_their_own_layer() -> None:
    torch.manual_seed(0)
    ranker = Ranker(RankerShape(("name", "context"), 8, 1, 1, (6,), (5,), (3,), (4,), 0.0)).eval()
    matching = NameMatching(ranker).eval()
    foreign, english, index = torch.randn(3, 8), torch.randn(4, 8), torch.tensor([[0, 1], [2, 3], [1, 1]])
    with torch.no_grad():
        scores = matching.name_scores(foreign, english, index)
        expected = torch.tanh(matching.match(ranker.pair_mlps["name_pair"](foreign, english, index))).squeeze(-1)
    assert scores.shape == (3, 2) and torch.equal(scores, expected)
    assert {name.split(".")[0] for name, _ in matching.named_parameters()} == {"ranker", "match"}


# --- end to end ---------------------------------------------------------------------------------


def test_name_matching_trains_its_loss_down_and_is_dropped_after_training(
    base_run: dict, run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.train.stage as train_stage

    checkpoints, save = [], train_stage.save_torch

    def keep_checkpoints(path: Path, payload: dict) -> None:  # the finished stage deletes its checkpoint
        if path.name == "last.pt":
            checkpoints.append(payload)
        save(path, payload)

    monkeypatch.setattr(train_stage, "save_torch", keep_checkpoints)
    result = with_pairs(base_run, run_copy, "run", f"train.epochs={LEARNING_EPOCHS}", "train.eval_every=10")
    distinct_names = len({name for pair in PAIRS for name in pair[:2]})
    assert f"name_pair_names={distinct_names}" in result.output and "name_pairs=10" in result.output

    history = pl.read_parquet(run_copy / "train" / "history.parquet")
    pair_loss = history["name_pair_loss"].to_numpy()
    assert len(pair_loss) == LEARNING_EPOCHS and np.isfinite(pair_loss).all()
    assert pair_loss[-5:].mean() < 0.8 * pair_loss[:5].mean(), pair_loss

    trained, plain = model_weights(run_copy), model_weights(base_run["run_dir"])
    assert trained.keys() == plain.keys()  # the ranker's weights only: no matching layer
    assert not any("match" in name for name in trained)
    assert set(checkpoints[-1]["name_match"]) == {"weight", "bias"}  # kept for resuming only
    assert not (run_copy / "train" / "checkpoints").exists()

    # The pair names are encoded as entity names are: "Barack Obama" is both.
    with h5py.File(run_copy / "encode" / "name_pairs.h5", "r") as handle:
        names = [v.decode() for v in handle["names/id"][:]]
        pair_vectors = handle["names/name"][:]
    with h5py.File(run_copy / "encode" / "vectors.h5", "r") as handle:
        entity_ids = [v.decode() for v in handle["entities/id"][:]]
        entity_vectors = handle["entities/name"][:]
    np.testing.assert_allclose(
        pair_vectors[names.index("Barack Obama")], entity_vectors[entity_ids.index("Q1")], rtol=1e-5, atol=1e-5
    )
    # evaluate loads the saved ranker as any other
    assert (run_copy / "evaluate" / "metrics.json").is_file()


def test_zero_weight_is_the_run_without_pairs(base_run: dict, run_copy: Path) -> None:
    result = with_pairs(base_run, run_copy, "run", "train.name_pair_weight=0")
    assert "train: up to date" in result.output  # the same stage key as without pairs
    with_pairs(base_run, run_copy, "train", "train.name_pair_weight=0", force=True)
    plain, retrained = model_weights(base_run["run_dir"]), model_weights(run_copy)
    assert retrained.keys() == plain.keys() and all(torch.equal(retrained[k], plain[k]) for k in plain)
    assert "name_pair_loss" not in pl.read_parquet(run_copy / "train" / "history.parquet").columns
    # At their defaults the new settings leave the train key of runs made before they existed.
    manifest = read_manifest(base_run["run_dir"] / "train")
    assert not set(manifest["settings"]) & {"name_pairs", "name_pair_weight", "name_pair_negatives"}


def test_a_changed_pairs_file_reencodes_only_the_names(base_run: dict, run_copy: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.tsv")
    with_pairs(base_run, run_copy, "run", "train.epochs=2", pairs=pairs)
    vectors_written = (run_copy / "encode" / "vectors.h5").stat().st_mtime_ns
    write_pairs(pairs, PAIRS[:6])
    stale = with_pairs(base_run, run_copy, "train", "train.epochs=2", pairs=pairs, exit_code=2)
    assert "[E407]" in stale.output and "name_pairs.h5" in stale.output
    result = with_pairs(base_run, run_copy, "run", "train.epochs=2", pairs=pairs)
    assert "encode: done" in result.output and "name_pair_names=" in result.output and "train: done" in result.output
    assert (run_copy / "encode" / "vectors.h5").stat().st_mtime_ns == vectors_written


def test_meantime_demonstration_pairs_come_from_the_training_split_only() -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    data = root.parent / "shared" / "data" / "meantime"
    if not (data / "mentions.jsonl").is_file():
        pytest.skip(f"MEANTIME not found at {data}")
    spec = importlib.util.spec_from_file_location("meantime_name_pairs", root / "scripts" / "meantime_name_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pairs = module.name_pairs(data / "mentions.jsonl", data / "kb.jsonl")
    assert pairs.height > 100 and set(pairs["lang"]) == {"es", "it", "nl"}
    assert not pairs.is_duplicated().any()
    mentions = pl.read_ndjson(data / "mentions.jsonl").with_columns(
        pl.col("mention").str.replace_all(r"\s+", " ").str.strip_chars()
    )
    training = set(mentions.filter(pl.col("split") == "train")["mention"])
    assert set(pairs["foreign"]) <= training
    kb_names = set(pl.read_ndjson(data / "kb.jsonl")["name"])
    assert set(pairs["english"]) <= kb_names
