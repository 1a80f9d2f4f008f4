"""The reader (rerank stage, docs/reader.md): it learns what only the context decides, its NIL option,
resume after a kill, staleness, and evaluate's use of it.

The ambiguity task: six surface names (Jordan, Amazon, ...) each name three KB entities, a
river, a company and a person, whose candidate texts differ only in their type and
description. A mention's sentence says which one it is ("boats sailed down the Jordan"),
and the triage candidates of every mention are the three entities of its name, so only
reading the context against the candidates decides. A fourth sense, a band, is in no KB
entry: those mentions are NIL.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli import main
from conftest import torchrun, write_jsonl, write_run_config

NAMES = ("Jordan", "Amazon", "Mercury", "Tesla", "Phoenix", "Orion")
# The cue words are whole words of the tiny transformer's vocabulary (tests/conftest.py), so one
# sub-word carries each; the fillers around them say nothing about the sense.
SENSES = {  # sense: (type, description, contexts by split)
    "company": (
        "company",
        "a company , a firm",
        {
            "train": [
                "The company {name} was first .",
                "{name} is a firm with new time .",
                "The firm {name} had a slow week .",
            ],
            "dev": ["The company {name} had a new week ."],
            "test": ["The firm {name} was new after Monday ."],
        },
    ),
    "club": (
        "club",
        "a club of the League and the Cup",
        {
            "train": [
                "The club {name} won the Cup .",
                "{name} beat the League club .",
                "The club {name} was first in the League .",
            ],
            "dev": ["{name} is a club in the Cup ."],
            "test": ["The club {name} beat them in the Cup ."],
        },
    ),
    "person": (
        "person",
        "a person ; she said her name",
        {
            "train": [
                "{name} said she was first .",
                "She said {name} had her week .",
                "{name} said her time was new .",
            ],
            "dev": ["{name} said she had time ."],
            "test": ["{name} said her week was slow ."],
        },
    ),
    "band": (
        None,
        None,  # no KB entity: NIL
        {
            "train": ["The band {name} was on tour .", "{name} had a record tour ."],
            "dev": ["{name} made a new record ."],
            "test": ["The band {name} had a new tour ."],
        },
    ),
}
TINY_RERANK = {
    "enabled": True,
    "top_k": 3,
    "max_seq_tokens": 80,
    "max_context_tokens": 20,
    "epochs": 18,
    "batch_mentions": 16,
    "learning_rate": 5e-3,
    "nil_hidden_share": 0.1,
    "seed": 5,
}


def ambiguity_data(folder: Path) -> dict[str, Path]:
    """mentions.jsonl and kb.jsonl of the ambiguity task under folder/ambiguity."""
    kb = [
        {
            "kb_id": f"{name}-{sense}",
            "name": name,
            "type": kind,
            "description": f"{name} is {description}.",
            "aliases": [],
        }
        for name in NAMES
        for sense, (kind, description, _) in SENSES.items()
        if kind is not None
    ]
    mentions = []
    for name in NAMES:
        for sense, (kind, _, contexts) in SENSES.items():
            for split, texts in contexts.items():
                for number, template in enumerate(texts):
                    text = template.format(name=name)
                    start = text.index(name)
                    mentions.append(
                        {
                            "id": f"{name}-{sense}-{split}-{number}",
                            "doc_id": f"{name}-{sense}-{split}-{number}",
                            "lang": "en",
                            "text": text,
                            "start": start,
                            "end": start + len(name),
                            "mention": name,
                            "split": split,
                            "gold_kb_id": f"{name}-{sense}" if kind is not None else "NIL",
                        }
                    )
    data = folder / "ambiguity"
    return {"mentions": write_jsonl(data / "mentions.jsonl", mentions), "kb": write_jsonl(data / "kb.jsonl", kb)}


def ambiguity_config(folder: Path, encoder: Path, **rerank) -> Path:
    """A run of the ambiguity task: triage by name only (k = 3: the name's three entities), a ranker over
    the frozen tiny transformer's vectors with its context feature, and the reader."""
    return write_run_config(
        folder,
        encoder,
        data=ambiguity_data(folder),
        triage={"k": 3, "use_dense": False, "use_fuzzy": False, "use_priors": False},
        train={"epochs": 20, "eval_every": 5, "patience": 0, "min_type_count": 1},
        evaluate={"nil_method": "auto", "nil_mention_prior": False},
        # The reader reads triage's order, not the ranker's: its input then does not move
        # with the ranker's own float noise (the ranker is what it is compared against).
        rerank={**TINY_RERANK, "candidates": "triage", **rerank},
    )


@pytest.fixture(scope="module")
def ambiguity_run(tmp_path_factory, tiny_encoder_dir: Path) -> dict:
    folder = tmp_path_factory.mktemp("ambiguity")
    config = ambiguity_config(folder, tiny_encoder_dir)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"config": config, "run_dir": folder / "run", "output": result.output, "folder": folder}


def test_the_reader_decides_by_context_where_the_frozen_ranker_cannot(ambiguity_run: dict) -> None:
    predictions = pl.read_parquet(ambiguity_run["run_dir"] / "evaluate" / "predictions.parquet")
    linked = predictions.filter((pl.col("split") == "test") & (pl.col("gold_kb_id") != "NIL"))
    ranker = (linked["best_kb_id"] == linked["gold_kb_id"]).mean()
    reader = (linked["reader_kb_id"] == linked["gold_kb_id"]).mean()
    print(f"test linking accuracy: ranker {ranker:.3f}, reader {reader:.3f} ({linked.height} mentions)")
    assert linked.height == 18
    # The ranker stays about chance (1/3): the name vectors are the same, the frozen context vectors say little.
    # The reader reads the context against the candidates (0.89-0.94 seen: float summation order across
    # thread counts moves a mention or two).
    assert ranker <= 0.5
    assert reader >= 0.8 and reader - ranker >= 0.4


def test_the_reader_learns_its_nil_option(ambiguity_run: dict) -> None:
    predictions = pl.read_parquet(ambiguity_run["run_dir"] / "evaluate" / "predictions.parquet")
    test = predictions.filter(pl.col("split") == "test")
    says_nil = (test["reader_nil_score"] > test["reader_score"]).to_numpy()
    gold_nil = (test["gold_kb_id"] == "NIL").to_numpy()
    print(
        f"reader NIL: {int((says_nil & gold_nil).sum())} of {int(gold_nil.sum())} NIL mentions, "
        f"{int((says_nil & ~gold_nil).sum())} linked ones said NIL"
    )
    assert (says_nil & gold_nil).sum() >= 5  # of 6 band mentions
    assert (says_nil & ~gold_nil).sum() <= 2  # of 18 linked ones
    metrics = json.loads((ambiguity_run["run_dir"] / "evaluate" / "metrics.json").read_text())
    assert metrics["nil_method"] == "reader"  # dev's cross-validation chose it


# ---------------------------------------------------------------------------
# The stage contract, on the tiny three-language run (pipeline/demo-sized, two epochs).
# ---------------------------------------------------------------------------

SMALL_RERANK = {
    "enabled": True,
    "top_k": 3,
    "max_seq_tokens": 80,
    "max_context_tokens": 24,
    "epochs": 2,
    "batch_mentions": 4,
    "learning_rate": 1e-3,
    "nil_hidden_share": 0.3,
}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_encoder_dir: Path) -> dict:
    """A finished tiny run with the reader, whose NIL decision is the reader's (evaluate.nil_method)."""
    folder = tmp_path_factory.mktemp("reader-run")
    config = write_run_config(
        folder,
        tiny_encoder_dir,
        rerank=dict(SMALL_RERANK),
        evaluate={"nil_method": "reader", "nil_mention_prior": False},
    )
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"config": config, "run_dir": folder / "run", "output": result.output, "encoder": tiny_encoder_dir}


def _config(base_run: dict, run_dir: Path, *overrides: str):
    from pipeline.core.config_file import load_config

    return load_config(base_run["config"], (f"run.run_dir={run_dir}", *overrides))


def test_the_stage_writes_its_outputs_and_evaluate_decides_by_the_reader(base_run: dict) -> None:
    rerank_dir = base_run["run_dir"] / "rerank"
    manifest = json.loads((rerank_dir / "manifest.json").read_text())
    assert manifest["outputs"] == ["reader", "reader_scores.parquet", "history.parquet"]
    # The resumable checkpoint (the size of the encoder three times over) is deleted once the manifest is written.
    assert sorted(p.name for p in rerank_dir.iterdir()) == [
        "history.parquet",
        "manifest.json",
        "reader",
        "reader_scores.parquet",
    ]
    scores = pl.read_parquet(rerank_dir / "reader_scores.parquet")
    assert scores.columns == ["mention_id", "kb_id", "slot", "score", "nil_score"]
    # dev and test mentions only (10 of the 16), up to top_k candidates each; NIL + candidates sum to 1
    assert set(scores["mention_id"].str.split("-").list.first()) <= {"en", "es", "ru"}
    assert scores["mention_id"].n_unique() == 10 and scores["slot"].max() <= 3
    totals = scores.group_by("mention_id").agg(pl.col("score").sum() + pl.col("nil_score").first())
    assert totals["score"].min() == pytest.approx(1.0, abs=1e-4) and totals["score"].max() == pytest.approx(
        1.0, abs=1e-4
    )
    metrics = json.loads((base_run["run_dir"] / "evaluate" / "metrics.json").read_text())
    assert metrics["nil_method"] == "reader"
    # What decided NIL is the reader, in the summary, report.md and metrics.json alike: no threshold it never read.
    summary = next(line for line in base_run["output"].splitlines() if line.startswith("evaluate: test split"))
    assert summary.startswith("evaluate: test split, NIL decided by the reader (NIL where its NIL option"), summary
    assert "threshold" not in summary, summary
    assert metrics["thresholds"] is None and metrics["nil_decided_by"].startswith("the reader (")
    manifest = json.loads((base_run["run_dir"] / "evaluate" / "manifest.json").read_text())
    assert manifest["thresholds"] is None and manifest["nil_method"] == "reader"
    kinds = {row["method"] for row in metrics["error_kinds"]}
    assert kinds == {"threshold", "reader"}
    report = (base_run["run_dir"] / "evaluate" / "report.md").read_text()
    assert f"NIL is decided by **{metrics['nil_decided_by']}** (evaluate.nil_method = reader" in report
    assert "No threshold decides; those below are the `threshold` method's" in report
    assert (
        "| method | language | mentions | right | not among candidates | wrong entity | false NIL | missed NIL |"
        in report
    )
    assert "rerank: best dev micro-average of the reader" in base_run["output"]


def test_mentions_the_reader_did_not_read_are_left_undecided(base_run: dict) -> None:
    """The reader reads dev and test only: under its NIL method the training split's mentions are not decided
    (is_nil, system_id and the decision columns null), where before every one was NIL with null probabilities.
    The ranker's own columns stay for them."""
    predictions = pl.read_parquet(base_run["run_dir"] / "evaluate" / "predictions.parquet")
    train = predictions.filter(pl.col("split") == "train")
    scored = predictions.filter(pl.col("split") != "train")
    assert train.height == 6 and scored.height == 10
    for column in ("reader_kb_id", "is_nil", "system_id", "threshold", "nil_probability", "nil_cut"):
        assert train[column].null_count() == train.height, column
    assert train["best_kb_id"].null_count() == 0  # the ranker scored them
    for column in ("is_nil", "system_id", "nil_probability", "nil_cut"):
        assert scored[column].null_count() == 0, column
    says_nil = (scored["nil_probability"] > scored["nil_cut"]).to_list()
    assert scored["is_nil"].to_list() == says_nil


def test_up_to_date_until_a_setting_of_its_own_changes(base_run: dict, run_copy: Path) -> None:
    from pipeline.rerank import stage

    assert stage.run(_config(base_run, run_copy)).skipped
    assert stage.run(_config(base_run, run_copy, "rerank.device=cpu")).skipped  # where it runs: not keyed
    changes = (
        "rerank.learning_rate=0.002",
        "rerank.top_k=2",
        "rerank.nil_hidden_share=0.5",
        "rerank.triage_evidence=true",
    )
    # triage_evidence came later: off, it is not in the key, so readers trained before it stay up to date
    assert "triage_evidence" not in stage.stage_identity(_config(base_run, run_copy))[1]
    for changed in changes:
        config = _config(base_run, run_copy, changed)
        inputs, settings = stage.stage_identity(config)
        from pipeline.core.manifest import StageRun

        assert not StageRun(run_copy / "rerank", stage.STAGE, stage.STAGE_VERSION, settings, inputs).up_to_date, changed
    # evaluate reads the reader: a run without it keeps evaluate's key of before, one with it names rerank's
    manifest = json.loads((run_copy / "evaluate" / "manifest.json").read_text())
    assert "rerank" in manifest["inputs"]


def test_evaluate_alone_refuses_a_reader_the_config_no_longer_asks_for(base_run: dict, run_copy: Path) -> None:
    """evaluate reads the reader's scores: run alone after a [rerank] setting changed, it names rerank as stale
    (E407) instead of deciding with the old reader (issue 21)."""
    args = ["evaluate", "--config", str(base_run["config"]), "--run-dir", str(run_copy)]
    result = CliRunner().invoke(main, [*args, "--set", "rerank.learning_rate=0.002"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: [E407] {run_copy / 'rerank' / 'manifest.json'}: `xel-cli evaluate` reads")
    assert "rerank.learning_rate: " in result.output and "run `xel-cli rerank` (or `xel-cli run`)" in result.output
    assert "evaluate: up to date" in CliRunner().invoke(main, args).output


def test_a_killed_training_resumes_to_the_uninterrupted_result(base_run: dict, run_copy: Path, monkeypatch) -> None:
    from pipeline.rerank import stage

    class Killed(Exception):
        pass

    saved = stage.save_torch

    def save_then_die(path, payload):
        saved(path, payload)
        raise Killed(f"killed after the checkpoint of epoch {payload['epoch']}")

    monkeypatch.setattr(stage, "save_torch", save_then_die)
    with pytest.raises(Killed, match="epoch 1"):
        stage.run(_config(base_run, run_copy), force=True)
    monkeypatch.setattr(stage, "save_torch", saved)
    assert not (run_copy / "rerank" / "manifest.json").exists()
    result = stage.run(_config(base_run, run_copy))
    assert not result.skipped
    resumed = pl.read_parquet(run_copy / "rerank" / "reader_scores.parquet")
    uninterrupted = pl.read_parquet(base_run["run_dir"] / "rerank" / "reader_scores.parquet")
    assert resumed.equals(uninterrupted)
    history = pl.read_parquet(run_copy / "rerank" / "history.parquet")
    assert history["epoch"].to_list() == [1, 2]
    assert not (run_copy / "rerank" / "checkpoints").exists()


def test_a_finished_training_only_scores_and_says_so(base_run: dict, run_copy: Path, monkeypatch, caplog) -> None:
    """Killed after the last epoch's checkpoint (before the scores and manifest), the rerun says the training is
    complete and only scores (before: "resuming the reader's training at epoch 3" for epochs = 2), and ends
    with the uninterrupted outputs; the checkpoint is then deleted."""
    import logging

    from pipeline.rerank import stage

    class Killed(Exception):
        pass

    def killed_at_scoring(*args, **kwargs):
        raise Killed("killed while scoring")

    monkeypatch.setattr(stage, "score_mentions", killed_at_scoring)
    with pytest.raises(Killed):
        stage.run(_config(base_run, run_copy), force=True)
    monkeypatch.undo()
    checkpoint = torch.load(run_copy / "rerank" / stage.CHECKPOINT, weights_only=False)
    assert checkpoint["epoch"] == 2 and not (run_copy / "rerank" / "manifest.json").exists()
    with caplog.at_level(logging.INFO):
        assert not stage.run(_config(base_run, run_copy)).skipped
    assert "resuming" not in caplog.text
    assert "the reader's training is complete (the checkpoint" in caplog.text
    assert "holds epoch 2, the last): nothing is trained again; the best epoch's reader only scores" in caplog.text
    for name in (stage.SCORES, stage.HISTORY):
        assert pl.read_parquet(run_copy / "rerank" / name).equals(
            pl.read_parquet(base_run["run_dir"] / "rerank" / name)
        )
    assert not (run_copy / "rerank" / "checkpoints").exists()


def test_deleted_scores_are_scored_again_without_a_checkpoint(base_run: dict, run_copy: Path, caplog) -> None:
    """A finished stage keeps no checkpoint; one that lost its scores is not retrained but scored again with its
    reader folder (the history and best epoch from history.parquet and the manifest), to the same outputs."""
    import logging

    from pipeline.rerank import stage

    rerank_dir = run_copy / "rerank"
    reader_files = {p.name: p.read_bytes() for p in (rerank_dir / stage.READER).iterdir()}
    (rerank_dir / stage.SCORES).unlink()
    with caplog.at_level(logging.INFO):
        result = stage.run(_config(base_run, run_copy))
    best_epoch = json.loads((base_run["run_dir"] / "rerank" / "manifest.json").read_text())["counts"]["best_epoch"]
    assert not result.skipped and result.counts["best_epoch"] == best_epoch
    assert f"the reader's training is complete (best epoch {best_epoch} of 2" in caplog.text
    assert "rerank epoch" not in caplog.text
    assert "replacing reader, reader_scores.parquet, history.parquet of the run finished" in caplog.text
    assert caplog.text.rstrip().count("reader_scores.parquet missing") == 1
    for name in (stage.SCORES, stage.HISTORY):
        assert pl.read_parquet(rerank_dir / name).equals(pl.read_parquet(base_run["run_dir"] / "rerank" / name))
    assert {p.name: p.read_bytes() for p in (rerank_dir / stage.READER).iterdir()} == reader_files
    manifest, before = (
        json.loads((d / "manifest.json").read_text()) for d in (rerank_dir, base_run["run_dir"] / "rerank")
    )
    assert manifest["key"] == before["key"] and manifest["counts"] == before["counts"]
    assert manifest["best_dev_accuracy"] == before["best_dev_accuracy"]
    assert not (rerank_dir / "checkpoints").exists()


@pytest.mark.parametrize(
    "setting, said",
    [
        ("rerank.encoder={missing}", "rerank.encoder names the folder {missing}, which does not exist)"),
        ("rerank.encoder={empty}", "rerank.encoder names the folder {empty}, which holds no config.json, so it is not"),
        ("rerank.encoder={file}", "rerank.encoder names {file}, a file, not a model folder)"),
        ("rerank.encoder={broken}", "{broken}: cannot load encoder ("),  # has config.json: the loader refuses it
        ("rerank.freeze_layers=9", "[rerank]: freeze_layers = 9 is invalid: the encoder has only 2 layers"),
    ],
    ids=["missing-folder", "not-a-model-folder", "a-file", "unloadable-folder", "freeze-past-the-top"],
)
def test_a_refused_rerank_keeps_the_finished_stage(
    base_run: dict, run_copy: Path, tmp_path: Path, setting: str, said: str
) -> None:
    """Refused before anything of the finished stage is removed (before: its manifest was gone, so the reader
    had to be trained again), E501 in plain words for an encoder path that is no model folder (before:
    Hugging Face's "Repo id must be in the form ..."), and the stage is up to date again as it was."""
    paths = {"missing": tmp_path / "no-such-encoder", "empty": tmp_path / "empty", "file": tmp_path / "model.bin"}
    paths["broken"] = tmp_path / "broken"
    paths["empty"].mkdir()
    paths["file"].write_bytes(b"weights?")
    paths["broken"].mkdir()
    (paths["broken"] / "config.json").write_text("{}")
    before = {p: p.read_bytes() for p in (run_copy / "rerank").rglob("*") if p.is_file()}
    args = ["rerank", "--config", str(base_run["config"]), "--run-dir", str(run_copy)]
    result = CliRunner().invoke(main, [*args, "--set", setting.format(**paths)])
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert said.format(**paths) in error and "Traceback" not in result.output, error
    assert "Repo id must" not in error
    if "encoder" in setting:
        assert error.startswith("Error: [E501] ") and error.endswith(
            "give a local model folder (one holding config.json, as save_pretrained writes it) or the name of a "
            "Hugging Face model in the local cache"
        )
    assert {p: p.read_bytes() for p in (run_copy / "rerank").rglob("*") if p.is_file()} == before
    assert "rerank: up to date" in CliRunner().invoke(main, args).output


def test_run_refuses_a_bad_encoder_before_any_stage(base_run: dict, run_copy: Path, tmp_path: Path) -> None:
    """`xel-cli run` checks every stage's settings first: a `rerank.encoder` that is no model folder is refused
    before triage, encode and train run (they would have been redone for a changed encoder.name)."""
    missing = tmp_path / "no-such-encoder"
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file() and p.name != "config.json"}
    for setting in (f"rerank.encoder={missing}", f"encoder.name={missing}"):
        args = ["run", "--config", str(base_run["config"]), "--run-dir", str(run_copy), "--set", setting]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"run: {run_copy}") and ": done in" not in result.output, result.output
        name = setting.split("=")[0]
        assert f"Error: [E501] {missing}: cannot load encoder ({name} names the folder {missing}, which does not" in (
            result.output
        )
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file() and p.name != "config.json"} == before


def test_ctrl_c_in_rerank_and_run_says_what_is_kept(base_run: dict, run_copy: Path, monkeypatch) -> None:
    """Interrupted in the reader's training, rerank and run each say in one line that its last checkpoint is
    kept, and how to resume (before: rerank said nothing of it, run named only encode's and train's)."""
    from pipeline.rerank import stage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "fit", interrupted)
    for command in ("rerank", "run"):
        args = [command, "--config", str(base_run["config"]), "--run-dir", str(run_copy), "--set", "rerank.epochs=3"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 130, result.output
        line = result.output.strip().splitlines()[-1]
        kept = {
            "rerank": "rerank keeps its last checkpoint (one after every epoch of the reader's training)",
            "run": "finished stages are kept, with encode's finished chunks and the last checkpoints of train and "
            "rerank (the reader's training, after every epoch)",
        }[command]
        assert line == f"Interrupted: {kept}; run `xel-cli {' '.join(args)}` again to resume.", line


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    import torch

    from pipeline.core.errors import CacheError
    from pipeline.rerank.training import load_checkpoint

    path = tmp_path / "last.pt"
    shape = {
        "model_type": "bert",
        "hidden_size": 32,
        "layers": 2,
        "vocab_size": 100,
        "top_k": 3,
        "max_seq_tokens": 80,
        "max_context_tokens": 24,
    }
    torch.save({"key": "k", "shape": {**shape, "hidden_size": 64}}, path)
    with pytest.raises(CacheError, match="E506") as caught:
        load_checkpoint(path, "k", shape)
    assert "hidden_size" in caught.value.format_message()
    assert load_checkpoint(path, "another key", shape) is None


def test_link_applies_the_reader_as_evaluate_did(base_run: dict, tmp_path: Path) -> None:
    from conftest import tiny_mention_records
    from pipeline.link.linker import Linker
    from pipeline.model.model_folder import export_model
    from pipeline.model.model_json import unknown_key

    meta = json.loads((base_run["run_dir"] / "model" / "model.json").read_text())
    assert meta["reader"]["folder"] == "reader" and "reader/head.pt" in meta["files"]
    assert unknown_key(meta) is None  # reader.json's record (epoch, settings, ...) is known: no E716
    exported = export_model(base_run["run_dir"], tmp_path / "exported")  # the reader travels with the linker
    linker = Linker.load(exported)
    assert linker.reader is not None
    records = [r for r in tiny_mention_records() if r["split"] == "test"]
    links = linker.link(records)
    evaluated = pl.read_parquet(base_run["run_dir"] / "evaluate" / "predictions.parquet").filter(
        pl.col("split") == "test"
    )
    decided = evaluated.select(
        "mention_id", pl.when(pl.col("is_nil")).then(pl.lit("NIL")).otherwise("system_id").alias("want")
    )
    got = links.select("mention_id", pl.when(pl.col("is_nil")).then(pl.lit("NIL")).otherwise("kb_id").alias("kb_id"))
    joined = got.join(decided, on="mention_id")
    assert joined.height == len(records)
    assert (joined["kb_id"] == joined["want"]).all(), joined


def test_settings_are_checked(base_run: dict) -> None:
    from pipeline.core.config import RerankConfig
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match="E203.*max_seq_tokens"):
        RerankConfig(top_k=8, max_context_tokens=96, max_seq_tokens=100)
    with pytest.raises(ConfigError, match="E203.*precision"):
        RerankConfig(precision="fp16")
    with pytest.raises(ConfigError, match="E203.*head_learning_rate"):
        RerankConfig(head_learning_rate=1.5)
    # The reader scores dev and test: its NIL method cannot be tuned on the training split, which it did not read.
    with pytest.raises(ConfigError, match="E203.*nil_method.*the reader scores only dev and test mentions"):
        _config(base_run, base_run["run_dir"], "evaluate.tune_split=train")


def test_the_command_and_the_reader_method_need_it_enabled(make_run_config) -> None:
    """Refused naming the config file (and the line that sets rerank.enabled), with the value as TOML writes it:
    before, `[rerank]: enabled = False`."""
    config = make_run_config()
    result = CliRunner().invoke(main, ["rerank", "--config", str(config)])
    assert result.exit_code == 2 and "rerank.enabled" in result.output
    assert result.output.startswith(f"Error: [E203] {config.resolve()} [rerank]: enabled = false (the default) is")
    config = make_run_config(name="off.toml", rerank={"enabled": False})
    line = config.read_text(encoding="utf-8").splitlines().index("enabled = false") + 1
    result = CliRunner().invoke(main, ["rerank", "--config", str(config)])
    assert result.output.startswith(f"Error: [E203] {config.resolve()}:{line} [rerank]: enabled = false is invalid")
    result = CliRunner().invoke(main, ["evaluate", "--config", str(config), "--set", "evaluate.nil_method=reader"])
    assert result.exit_code == 2 and "[E203]" in result.output and "rerank.enabled = true" in result.output


def without_dropout(encoder: Path, folder: Path) -> Path:
    """A copy of the encoder whose dropout is off: then two ranks' half batches step as one process's whole batch."""
    copy = folder / "encoder-no-dropout"
    shutil.copytree(encoder, copy)
    settings = json.loads((copy / "config.json").read_text())
    settings.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (copy / "config.json").write_text(json.dumps(settings))
    return copy


def assert_same_weights(one: dict, two: dict) -> None:
    """Two state dicts agree up to float summation order, tensor by tensor: the norm of the difference
    within 0.1 % of the tensor's. Not element by element: where an element's gradient is float noise,
    Adam scales it to a full step, so a few elements of a large matrix can differ by the learning rate
    (CI once saw it in the word embeddings); a tensor trained on other batches differs as a whole.

    Bar the slot projection's bias: it adds the same query . bias to every slot, so it changes no
    probability, and all its gradient is float noise."""
    assert one.keys() == two.keys()
    for name in [name for name in one if not name.endswith("slot_projection.bias")]:
        difference = (two[name].double() - one[name].double()).norm().item()
        assert difference <= 1e-3 * one[name].double().norm().item() + 1e-5, (name, difference)


def test_two_gloo_processes_train_the_reader_as_one_process(base_run: dict, run_copy: Path, tmp_path: Path) -> None:
    """Under torchrun (2 CPU processes, gloo) each rank reads every other mention of an epoch's order, and DDP
    averages the gradients: with batches of 1 per rank and dropout off, that is one process's batches of 2, so
    the weights, scores and history agree up to float summation order; rank 0 alone writes the outputs and the
    manifest, as one process does."""
    from pipeline.core.manifest import read_manifest
    from pipeline.rerank import stage

    same = [
        f"rerank.encoder={without_dropout(base_run['encoder'], tmp_path)}",
        "rerank.precision=fp32",
        "rerank.candidates=triage",  # the ranker's top candidates would move with its own float noise
    ]
    same = [arg for setting in same for arg in ("--set", setting)]
    single_dir, parallel_dir = run_copy, tmp_path / "parallel"
    shutil.copytree(run_copy, parallel_dir)
    result = CliRunner().invoke(
        main,
        [
            "rerank",
            "--config",
            str(base_run["config"]),
            "--run-dir",
            str(single_dir),
            *same,
            "--set",
            "rerank.batch_mentions=2",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    done = torchrun(
        "rerank", "--config", base_run["config"], "--run-dir", parallel_dir, *same, "--set", "rerank.batch_mentions=1"
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("rerank: done") == 1  # only rank 0 reports

    single, parallel = (read_manifest(folder / stage.STAGE) for folder in (single_dir, parallel_dir))
    assert single["settings"]["batch_mentions"] == 2 and parallel["settings"]["batch_mentions"] == 1
    # An even number of training mentions: no rank pads its share by repeating one.
    assert single["counts"]["train_mentions"] % 2 == 0 and single["counts"]["train_mentions"] >= 4
    assert parallel["outputs"] == single["outputs"] == ["reader", "reader_scores.parquet", "history.parquet"]
    assert parallel["counts"] == single["counts"]
    assert parallel["world_size"] == 2 and "world_size" not in single

    scores = [pl.read_parquet(folder / stage.STAGE / stage.SCORES) for folder in (single_dir, parallel_dir)]
    assert scores[1].select("mention_id", "kb_id", "slot").equals(scores[0].select("mention_id", "kb_id", "slot"))
    for column in ("score", "nil_score"):
        assert scores[1][column].to_numpy() == pytest.approx(scores[0][column].to_numpy(), rel=1e-3, abs=1e-5)
    history = [pl.read_parquet(folder / stage.STAGE / stage.HISTORY) for folder in (single_dir, parallel_dir)]
    assert history[1]["epoch"].to_list() == history[0]["epoch"].to_list() == [1, 2]
    assert history[1]["loss"].to_numpy() == pytest.approx(history[0]["loss"].to_numpy(), rel=1e-4, abs=1e-6)
    assert history[1]["dev_accuracy"].to_list() == history[0]["dev_accuracy"].to_list()

    readers = [folder / stage.STAGE / stage.READER for folder in (single_dir, parallel_dir)]
    assert sorted(p.name for p in readers[1].iterdir()) == sorted(p.name for p in readers[0].iterdir())
    # Both finished: their checkpoints are deleted, by rank 0 alone once the manifest is written.
    assert not any((folder / stage.STAGE / "checkpoints").exists() for folder in (single_dir, parallel_dir))
    heads = [torch.load(folder / "head.pt", weights_only=True) for folder in readers]
    assert not any(name.startswith("module.") for name in heads[1])  # the reader's names, not DDP's
    assert_same_weights(*heads)  # the best epoch
    assert_same_weights(*(load_file(folder / "model.safetensors") for folder in readers))
    assert not list(parallel_dir.rglob("*.tmp")) and not (parallel_dir / ".xel.lock").exists()


def test_the_pairwise_form_reads_one_sequence_per_candidate(base_run: dict, run_copy: Path) -> None:
    from pipeline.model.reader_inputs import Layout, Specials, reading
    from pipeline.rerank import stage

    marks = Specials(cls=1, sep=2, pad=0, mention_start=3, mention_end=4, nil=5, entity=6)
    context, candidates = [10, 3, 11, 4, 12], [[20, 21], [30], [40, 41, 42]]
    listwise = reading(context, candidates, ["a", "b", "c"], Layout(40, 8, 3), marks)
    assert listwise.sequences == [[1, 10, 3, 11, 4, 12, 2, 5, 6, 20, 21, 6, 30, 6, 40, 41, 42, 2]]
    assert listwise.picks == [(0, 0), (0, 1), (0, 2), (0, 3)] and listwise.mentions == [(2, 4)]
    pairwise = reading(context, candidates, ["a", "b", "c"], Layout(40, 8, 3, "pairwise"), marks)
    assert pairwise.sequences[0] == [1, 10, 3, 11, 4, 12, 2, 5, 2]  # the NIL option alone
    assert pairwise.sequences[3] == [1, 10, 3, 11, 4, 12, 2, 5, 6, 40, 41, 42, 2]
    assert pairwise.picks == [(0, 0), (1, 1), (2, 1), (3, 1)]

    result = stage.run(_config(base_run, run_copy, "rerank.form=pairwise"))
    assert not result.skipped  # another form, another key
    scores = pl.read_parquet(run_copy / "rerank" / "reader_scores.parquet")
    totals = scores.group_by("mention_id").agg(pl.col("score").sum() + pl.col("nil_score").first())["score"]
    assert totals.min() == pytest.approx(1.0, abs=1e-4) and totals.max() == pytest.approx(1.0, abs=1e-4)
    assert json.loads((run_copy / "rerank" / "reader" / "reader.json").read_text())["layout"]["form"] == "pairwise"


def test_the_model_folder_carries_the_reader_only_where_it_decides(base_run: dict, run_copy: Path) -> None:
    """fresh21 F13: with the reader on and NIL decided by a threshold, model/ kept a full copy of the
    reader (470 MB with e5) that link never loads."""
    assert (base_run["run_dir"] / "model" / "reader" / "head.pt").is_file()  # the reader decides there
    args = ["evaluate", "--config", str(base_run["config"]), "--run-dir", str(run_copy)]
    result = CliRunner().invoke(main, [*args, "--set", "evaluate.nil_method=threshold"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    meta = json.loads((run_copy / "model" / "model.json").read_text())
    assert meta["nil"]["method"] == "threshold" and meta["reader"] is None
    assert not (run_copy / "model" / "reader").exists() and not any(
        name.startswith("reader/") for name in meta["files"]
    )
    assert (run_copy / "rerank" / "reader" / "head.pt").is_file()  # the run's own copy stays
    from conftest import tiny_mention_records
    from pipeline.link.linker import Linker

    linker = Linker.load(run_copy / "model")
    assert linker.reader is None
    assert linker.link([r for r in tiny_mention_records() if r["split"] == "test"]).height > 0
