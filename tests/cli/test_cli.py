"""xel-cli end to end on the tiny inputs and the tiny random encoder (CliRunner, tmp_path).

One full run is made per module (`base_run`); tests that change something work on a copy
of its run folder (`run_copy`, mtimes preserved), so each starts from a finished run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import torch

import pipeline.train.batches
from conftest import TINY_KB, invoke, succeeded, tiny_mention_records, write_jsonl, write_run_config
from pipeline.core import schema
from pipeline.core.manifest import read_manifest
from pipeline.scoring.measures import MEASURES, MICRO_AVERAGE

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("triage", "encode", "train", "evaluate")
STAGE_OUTPUTS = {
    "triage": ["mentions.parquet", "entities.parquet", "candidates.parquet", "report.json", "manifest.json"],
    "encode": ["vectors.h5", "manifest.json"],
    "train": ["model.pt", "history.parquet", "manifest.json"],
    "evaluate": [
        "scores.parquet",
        "predictions.parquet",
        "system.tab",
        "gold.tab",
        "doc_languages.tsv",
        "metrics.json",
        "report.md",
        "sweep.parquet",
        "thresholds.png",
        "nil.json",
        "analysis.parquet",
        "confusions.parquet",
        "manifest.json",
    ],
}
TEST_MENTIONS = [r["id"] for r in tiny_mention_records() if r["split"] == "test"]


def stage_status(output: str) -> dict[str, str]:
    """`{stage: "done" | "up to date"}` from the lines the CLI prints per stage."""
    status = {}
    for line in output.splitlines():
        for stage in STAGES:
            if line.startswith(f"{stage}: up to date"):
                status[stage] = "up to date"
            elif line.startswith(f"{stage}: done in"):
                status[stage] = "done"
    return status


def mtimes(run_dir: Path, stages=STAGES) -> dict[str, int]:
    return {
        str(p.relative_to(run_dir)): p.stat().st_mtime_ns
        for stage in stages
        for p in sorted((run_dir / stage).rglob("*"))
        if p.is_file()
    }


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def same_state(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    folder = tmp_path_factory.mktemp("base-run")
    config = write_run_config(folder, tiny_encoder_dir)
    result = succeeded(invoke("run", "--config", config))
    return {"config": config, "run_dir": folder / "run", "output": result.output, "encoder": tiny_encoder_dir}


def test_run_writes_every_stage_output(base_run: dict) -> None:
    run_dir, output = base_run["run_dir"], base_run["output"]
    assert stage_status(output) == dict.fromkeys(STAGES, "done")
    assert "run: finished in" in output
    for stage, names in STAGE_OUTPUTS.items():
        for name in names:
            assert (run_dir / stage / name).is_file(), f"{stage}/{name}"
        # Nor anything else: train's checkpoint is deleted once its manifest is written.
        assert sorted(str(p.relative_to(run_dir / stage)) for p in (run_dir / stage).rglob("*")) == sorted(names)
        manifest = read_manifest(run_dir / stage)
        assert manifest["stage"] == stage and manifest["key"] and manifest["counts"]
        assert set(manifest["outputs"]) <= set(names)
        assert "torch" in manifest["versions"]
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
    saved_config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert saved_config["train"]["epochs"] == 6 and saved_config["encoder"]["name"] == str(base_run["encoder"])

    mentions = pl.read_parquet(run_dir / "triage" / "mentions.parquet")
    assert sorted(mentions["mention_id"]) == sorted(r["id"] for r in tiny_mention_records())
    assert dict(pl.read_parquet(run_dir / "triage" / "candidates.parquet").schema) == schema.CANDIDATES
    assert pl.read_parquet(run_dir / "triage" / "entities.parquet").height == len(TINY_KB)


def test_evaluate_s_counts_name_the_split_they_count(base_run: dict) -> None:
    """evaluate's done line and manifest name the evaluation split in the counts of it (issue 21: a bare
    `predicted_nil` counted test mentions only, beside `mentions_scored` of every split, unsaid)."""
    from pipeline.formats.tac import read_tab

    run_dir = base_run["run_dir"]
    counts = read_manifest(run_dir / "evaluate")["counts"]
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    system = read_tab(run_dir / "evaluate" / "system.tab")
    assert set(counts) == {"mentions_scored", "candidates_scored", "test_mentions", "test_predicted_nil"}
    assert counts["test_mentions"] == metrics["counts"]["overall"]["gold_mentions"] == system.height
    assert counts["test_predicted_nil"] == system["kb_id"].str.starts_with("NIL").sum()
    assert counts["mentions_scored"] == pl.read_parquet(run_dir / "triage" / "mentions.parquet").height
    assert counts["mentions_scored"] > counts["test_mentions"]
    line = next(line for line in base_run["output"].splitlines() if line.startswith("evaluate: done in"))
    assert f"test_mentions={counts['test_mentions']}, test_predicted_nil={counts['test_predicted_nil']})" in line


def test_vectors_are_keyed_by_id_and_self_describing(base_run: dict) -> None:
    run_dir = base_run["run_dir"]
    mention_ids = pl.read_parquet(run_dir / "triage" / "mentions.parquet")["mention_id"].to_list()
    with h5py.File(run_dir / "encode" / "vectors.h5", "r") as handle:
        ids = [v.decode() for v in handle["mentions/id"][:]]
        assert sorted(ids) == sorted(mention_ids) and len(ids) == len(set(ids))
        assert handle["mentions/name"].shape == handle["mentions/context"].shape == (len(ids), 32)
        entity_ids = [v.decode() for v in handle["entities/id"][:]]
        assert set(entity_ids) <= {e["kb_id"] for e in TINY_KB} and entity_ids
        assert handle["entities/name"].shape == handle["entities/context"].shape == (len(entity_ids), 32)
        assert handle.attrs["encoder"] == str(base_run["encoder"])
        assert handle.attrs["name_layer"] == 1
        assert {"encoder_identity", "axis_0", "axis_1", "name_pooling", "context_pooling"} <= set(handle.attrs)
        assert np.isfinite(handle["mentions/name"][:]).all()
        # Two mentions of one context share its context vector; different contexts do not.
        row = {m: i for i, m in enumerate(ids)}
        contexts = handle["mentions/context"][:]
        assert np.array_equal(contexts[row["en-1"]], contexts[row["en-2"]])
        assert not np.array_equal(contexts[row["en-1"]], contexts[row["ru-1"]])


def test_train_and_evaluate_outputs(base_run: dict) -> None:
    run_dir = base_run["run_dir"]
    saved = torch.load(run_dir / "train" / "model.pt", map_location="cpu", weights_only=False)
    assert {"model", "shape", "mention_types", "entity_types", "best_epoch", "config", "key"} <= set(saved)
    assert saved["shape"]["name_hidden"] in ([16], (16,))
    history = pl.read_parquet(run_dir / "train" / "history.parquet")
    assert history["epoch"].to_list() == [1, 2, 3, 4, 5, 6]
    assert history.filter(pl.col("dev_accuracy").is_not_null())["epoch"].to_list() == [2, 4, 6]

    scores = pl.read_parquet(run_dir / "evaluate" / "scores.parquet")
    assert scores["score"].is_between(-1, 1).all()
    predictions = pl.read_parquet(run_dir / "evaluate" / "predictions.parquet")
    assert predictions.height == len(tiny_mention_records())
    assert {"mention_id", "best_kb_id", "best_score", "threshold", "is_nil", "system_id"} <= set(predictions.columns)
    nil_rows = predictions.filter(pl.col("is_nil"))
    assert nil_rows["system_id"].str.starts_with("NIL").all()

    for name in ("system.tab", "gold.tab"):
        lines = (run_dir / "evaluate" / name).read_text(encoding="utf-8").splitlines()
        assert sorted(line.split("\t")[1] for line in lines) == sorted(TEST_MENTIONS)
        assert all(len(line.split("\t")) == 8 for line in lines)
    gold_lines = {
        line.split("\t")[1]: line.split("\t")
        for line in (run_dir / "evaluate" / "gold.tab").read_text(encoding="utf-8").splitlines()
    }
    record = next(r for r in tiny_mention_records() if r["id"] == "ru-3")
    assert gold_lines["ru-3"][3] == f"{record['doc_id']}:{record['start']}-{record['end'] - 1}"  # end inclusive
    assert gold_lines["ru-3"][4] == "Q2"

    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["by_language"]) == {"en", "es", "ru"}
    assert 0 <= metrics["overall"][MICRO_AVERAGE]["micro_average"] <= 1
    assert metrics["split"] == "test" and set(metrics["thresholds"]) == {"en", "es", "ru"}
    report = (run_dir / "evaluate" / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# Evaluation on the test split") and MICRO_AVERAGE in report
    assert "kbp2010_micro_average" in base_run["output"]

    # nil.json, applied by the function anything that links new mentions calls, gives evaluate's decisions.
    from pipeline.model.nil import decide_nil

    artifact = json.loads((run_dir / "evaluate" / "nil.json").read_text(encoding="utf-8"))
    # Two dev mentions with gold NIL or not: too few for the classifier, so thresholds decide.
    assert artifact["method"] == "threshold" and artifact["classifier"] is None
    assert artifact["thresholds"] == metrics["thresholds"] and metrics["nil_method"] == "threshold"
    assert (
        decide_nil(predictions.drop("threshold", "is_nil"), artifact)["is_nil"].to_list()
        == predictions["is_nil"].to_list()
    )
    assert "## Error analysis" in report and "### The 20 most frequent confusions" in report
    analysis = pl.read_parquet(run_dir / "evaluate" / "analysis.parquet")
    language = analysis.filter((pl.col("analysis") == "language") & (pl.col("lang") == "all"))
    assert language["mentions"].sum() == len(TEST_MENTIONS)


def test_second_run_is_up_to_date_and_rewrites_nothing(base_run: dict, run_copy: Path) -> None:
    before = mtimes(run_copy)
    result = succeeded(invoke("run", "--config", base_run["config"], "--run-dir", run_copy))
    assert stage_status(result.output) == dict.fromkeys(STAGES, "up to date")
    assert mtimes(run_copy) == before


def test_cache_keys_follow_content_not_paths(base_run: dict, run_copy: Path, tmp_path: Path) -> None:
    # The same inputs written elsewhere (a new config and new files with the same bytes) hit the cache.
    config = write_run_config(tmp_path / "elsewhere", base_run["encoder"])
    result = succeeded(invoke("run", "--config", config, "--run-dir", run_copy))
    assert stage_status(result.output) == dict.fromkeys(STAGES, "up to date")


def test_train_setting_change_reruns_train_and_evaluate_only(base_run: dict, run_copy: Path) -> None:
    before = mtimes(run_copy, ("triage", "encode"))
    result = succeeded(invoke("run", "--config", base_run["config"], "--run-dir", run_copy, "--set", "train.epochs=4"))
    assert stage_status(result.output) == {
        "triage": "up to date",
        "encode": "up to date",
        "train": "done",
        "evaluate": "done",
    }
    assert mtimes(run_copy, ("triage", "encode")) == before
    assert pl.read_parquet(run_copy / "train" / "history.parquet").height == 4
    # ... and the saved effective config says so.
    assert json.loads((run_copy / "config.json").read_text(encoding="utf-8"))["train"]["epochs"] == 4
    # Back to the old setting: train and evaluate redo it (the run folder holds one result per stage).
    result = succeeded(invoke("run", "--config", base_run["config"], "--run-dir", run_copy))
    assert stage_status(result.output)["train"] == "done"


def test_evaluate_setting_change_reruns_evaluate_only(base_run: dict, run_copy: Path) -> None:
    result = succeeded(
        invoke(
            "run",
            "--config",
            base_run["config"],
            "--run-dir",
            run_copy,
            "--set",
            "evaluate.nil_clustering=singleton",
            "--set",
            "evaluate.threshold_mode=fixed",
        )
    )
    assert stage_status(result.output) == {
        "triage": "up to date",
        "encode": "up to date",
        "train": "up to date",
        "evaluate": "done",
    }
    metrics = json.loads((run_copy / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["thresholds"] == {"en": -0.8, "es": -1.0, "ru": -1.0}  # the paper's fixed values
    manifest = read_manifest(run_copy / "evaluate")
    assert "sweep.parquet" not in manifest["outputs"]


@pytest.mark.parametrize(
    "setting, code, named",
    [
        ('evaluate.languages=["fr"]', "E203", 'languages = ["fr"]'),  # the tiny data's test split is en, es, ru
        ("evaluate.eval_split=train2", "E112", "no train2 mention has a gold id"),
        ("evaluate.tune_split=train2", "E112", "no train2 mention has a gold id to tune"),
    ],
)
def test_evaluate_settings_that_leave_nothing_to_score_leave_the_finished_evaluation(
    base_run: dict, run_copy: Path, setting: str, code: str, named: str
) -> None:
    before, config = mtimes(run_copy), (run_copy / "config.json").read_bytes()
    result = invoke("evaluate", "--config", base_run["config"], "--run-dir", run_copy, "--set", setting)
    assert result.exit_code == 2 and f"[{code}]" in result.output and named in result.output, result.output
    assert mtimes(run_copy) == before  # the finished evaluation keeps its manifest and every output
    assert (run_copy / "config.json").read_bytes() == config  # and the run's config is not the refused one


def test_evaluate_counts_the_mentions_it_leaves_out_for_want_of_gold(base_run: dict, tmp_path: Path) -> None:
    from conftest import tiny_mention_records

    records = tiny_mention_records()
    blank = [r for r in records if r["split"] == "test"][:2]
    for record in blank:
        record["gold_kb_id"] = " "  # blank: no gold, left out of the score
    folder = tmp_path / "blank-gold"
    write_jsonl(folder / "data" / "mentions.jsonl", records)
    write_jsonl(folder / "data" / "kb.jsonl", TINY_KB)
    result = succeeded(invoke("run", "--config", write_run_config(folder, base_run["encoder"])))
    metrics = json.loads((folder / "run" / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    tested = sum(r["split"] == "test" for r in records)
    assert metrics["unscored_mentions"] == 2 and metrics["counts"]["overall"]["gold_mentions"] == tested - 2
    assert "2 test mention(s) without gold_kb_id left out" in result.output


def test_evaluate_uses_the_seed_the_model_was_trained_with(
    base_run: dict, run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate's key holds no train setting, so a seed given to evaluate alone must not change its NIL
    decision (the cross-validation folds and fits are seeded): it takes the trained model's seed. (`xel-cli
    evaluate` refuses such a config first: train is stale for it, E407; the stage itself is called here.)"""
    from pipeline.core.config_file import load_config
    from pipeline.evaluate import nil_choice
    from pipeline.evaluate.stage import run as evaluate

    seeds, choose = [], nil_choice.choose
    monkeypatch.setattr(nil_choice, "choose", lambda *args: seeds.append(args[-1]) or choose(*args))
    before = (run_copy / "evaluate" / "nil.json").read_text(encoding="utf-8")
    refused = invoke("evaluate", "--config", base_run["config"], "--run-dir", run_copy, "--set", "train.seed=99")
    assert refused.exit_code == 2 and "[E407]" in refused.output and "train.seed: 13 -> 99" in refused.output
    evaluate(load_config(Path(base_run["config"]), (f"run.run_dir={run_copy}", "train.seed=99")), force=True)
    assert seeds == [13]  # the tiny run's training seed (the config's default), not 99
    assert (run_copy / "evaluate" / "nil.json").read_text(encoding="utf-8") == before


def test_kb_change_reruns_everything(base_run: dict, run_copy: Path, tmp_path: Path) -> None:
    kb = [dict(entity) for entity in TINY_KB]
    kb[4]["description"] = "An intergovernmental organisation founded in 1945."
    folder = tmp_path / "changed"
    write_run_config(folder, base_run["encoder"])  # tiny inputs in folder/data
    write_jsonl(folder / "data" / "kb.jsonl", kb)
    result = succeeded(invoke("run", "--config", folder / "run.toml", "--run-dir", run_copy))
    assert stage_status(result.output) == dict.fromkeys(STAGES, "done")


def test_force_redoes_every_stage(base_run: dict, run_copy: Path) -> None:
    before = mtimes(run_copy)
    result = succeeded(invoke("run", "--config", base_run["config"], "--run-dir", run_copy, "--force"))
    assert stage_status(result.output) == dict.fromkeys(STAGES, "done")
    after = mtimes(run_copy)
    for stage in STAGES:
        assert after[f"{stage}/manifest.json"] != before[f"{stage}/manifest.json"]
    # A forced re-run of the same settings gives the same model (seeded).
    assert same_state(
        state_dict(run_copy / "train" / "model.pt"), state_dict(base_run["run_dir"] / "train" / "model.pt")
    )


def test_single_stage_commands(base_run: dict, run_copy: Path) -> None:
    for stage in STAGES:
        result = succeeded(invoke(stage, "--config", base_run["config"], "--run-dir", run_copy))
        assert stage_status(result.output) == {stage: "up to date"}
    result = succeeded(invoke("evaluate", "--config", base_run["config"], "--run-dir", run_copy, "--force"))
    assert stage_status(result.output) == {"evaluate": "done"}
    assert "evaluate: test split, NIL thresholds" in result.output


def test_quiet_prints_no_summary_but_warnings_errors_and_scores(base_run: dict, run_copy: Path, tmp_path: Path) -> None:
    """-q: no command's summary on stdout; warnings and errors still show, and `score` prints its scores."""
    for stage in ("triage", "evaluate"):
        result = succeeded(invoke("-q", stage, "--config", base_run["config"], "--run-dir", run_copy))
        assert result.stdout == "" and result.stderr == ""
    forced = succeeded(invoke("-q", "evaluate", "--config", base_run["config"], "--run-dir", run_copy, "--force"))
    assert forced.stdout == "" and all(
        re.match(r"WARNING \S+: \[W\d{3}\] ", line) for line in forced.stderr.splitlines()
    )
    evaluate_dir = run_copy / "evaluate"
    assert "overall" in succeeded(invoke("-q", "score", evaluate_dir / "gold.tab", evaluate_dir / "system.tab")).stdout
    failed = invoke("-q", "score", tmp_path / "missing.tab", evaluate_dir / "system.tab")
    assert failed.exit_code == 2 and failed.stdout == "" and failed.stderr.startswith("Error: [E108] ")


def test_a_stage_before_its_upstream_is_e401(base_run: dict, tmp_path: Path) -> None:
    result = invoke("train", "--config", base_run["config"], "--run-dir", tmp_path / "empty")
    assert result.exit_code == 2
    assert "Error: [E401]" in result.output and "xel-cli triage" in result.output
    assert "Traceback" not in result.output


def test_damaged_manifest_is_e402_and_a_missing_output_is_redone(base_run: dict, run_copy: Path) -> None:
    (run_copy / "encode" / "vectors.h5").unlink()
    result = succeeded(invoke("run", "--config", base_run["config"], "--run-dir", run_copy))
    assert stage_status(result.output)["encode"] == "done"
    assert (run_copy / "encode" / "vectors.h5").is_file()
    (run_copy / "train" / "manifest.json").write_text("{ not json", encoding="utf-8")
    result = invoke("run", "--config", base_run["config"], "--run-dir", run_copy)
    assert result.exit_code == 2
    assert f"Error: [E402] {run_copy / 'train' / 'manifest.json'}" in result.output


def test_user_errors_are_one_line_with_exit_code_2(
    make_run_config, tiny_inputs: dict[str, Path], tmp_path: Path
) -> None:
    # A bad config value.
    result = invoke("run", "--config", make_run_config(triage={"k": 0}))
    assert result.exit_code == 2
    assert result.output.startswith("Error: [E203]") and len(result.output.strip().splitlines()) == 1
    # A bad --set.
    result = invoke("triage", "--config", make_run_config(), "--set", "train.epochs")
    assert result.exit_code == 2 and "Error: [E203]" in result.output
    # A bad input file: the error names the file and line.
    tiny_inputs["kb"].write_text('{"kb_id": "Q1", "name": "Paris"}\n{"kb_id": "Q2"}\n', encoding="utf-8")
    result = invoke("triage", "--config", make_run_config())
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error: [E")]
    assert error_lines == [error_lines[0]] and error_lines[0].startswith(f"Error: [E102] {tiny_inputs['kb']}:2:")
    assert "Traceback" not in result.output
    # --debug adds the traceback, and still exits with 2.
    result = invoke("--debug", "triage", "--config", make_run_config())
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.output and "Error: [E102]" in result.output


def test_errors_in_a_real_process_and_debug_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        'name = "x"\n[inputs]\nkb = "kb.jsonl"\nmentions = "m.jsonl"\n[train]\nepochz = 3\n', encoding="utf-8"
    )
    command = [sys.executable, str(ROOT / "cli.py")]
    plain = subprocess.run([*command, "triage", "--config", str(config)], capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 2
    assert plain.stderr.strip().startswith("Error: [E201]") and "epochz" in plain.stderr
    assert "Traceback" not in plain.stderr + plain.stdout
    debug = subprocess.run(
        [*command, "--debug", "triage", "--config", str(config)], capture_output=True, text=True, cwd=ROOT
    )
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "E201" in debug.stderr


@pytest.mark.parametrize(
    "args, code, where",
    [
        (
            ["export", "{tmp}/no-run", "{tmp}/out"],
            "E206",
            "main export RUN_DIR: Directory '{tmp}/no-run' does not exist",
        ),
        (
            ["link", "--model", "m", "--mentions", "m.jsonl", "--out", "{tmp}/a-file"],
            "E206",
            "main link --out: Directory '{tmp}/a-file' is a file",
        ),
        (
            ["link", "--model", "m", "--mentions", "m.jsonl", "--out", "{tmp}/o", "--shard", "0/2", "--merge"],
            "E206",
            "main link --merge: --shard and --merge exclude each other",
        ),
        (
            ["encode", "--config", "{tmp}/a-file", "--shard", "0/2", "--merge"],
            "E206",
            "main encode --merge: --shard and --merge",
        ),
        (
            ["link", "--model", "m", "--mentions", "m.jsonl", "--out", "{tmp}/o", "--chunk-mentions", "0"],
            "E206",
            "main link --chunk-mentions: 0 is not in the range",
        ),
        (
            ["link", "--model", "m", "--mentions", "m.jsonl", "--out", "{tmp}/o", "--fallback-threshold", "low"],
            "E206",
            "main link --fallback-threshold: 'low' is not a valid float",
        ),
        (["link", "--mentions", "m.jsonl", "--out", "{tmp}/o"], "E206", "main link --model: Missing option '--model'"),
        (
            ["link", "--model", "m", "--mentions", "m.jsonl", "--out", "{tmp}/o", "--shard"],
            "E206",
            "main link --shard: Option '--shard' requires an argument",
        ),
        (["triage", "--config", "{tmp}/no.toml"], "E206", "main triage --config: File '{tmp}/no.toml' does not exist"),
        (
            ["search", "--config", "{tmp}/a-file", "--trials", "0"],
            "E206",
            "main search --trials: 0 is not in the range",
        ),
        (
            ["score", "g.tab", "s.tab", "--languages", "{tmp}/no.tsv"],
            "E206",
            "main score --languages: File '{tmp}/no.tsv' does not exist",
        ),
        (["run", "--epochs", "3"], "E206", "main run --epochs: No such option '--epochs'"),
        (["--bogus", "run"], "E206", "main --bogus: No such option '--bogus'"),
        (["score", "g.tab", "s.tab", "extra.tab"], "E207", "main score: Got unexpected extra argument (extra.tab)"),
        (["evaluat"], "E207", "main: No such command 'evaluat'"),
    ],
)
def test_click_usage_errors_are_our_one_line_errors(tmp_path: Path, args: list[str], code: str, where: str) -> None:
    """Every command-line check click makes itself comes out as `Error: [E206/E207] ...`, exit 2,
    naming the option and pointing to --help, without click's usage block."""
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: [{code}] {where.replace('{tmp}', str(tmp_path))}"), result.output
    assert len(result.output.splitlines()) == 1 and "Usage:" not in result.output and "Traceback" not in result.output
    assert result.output.rstrip().endswith(" --help`")
    assert (tmp_path / "a-file").read_text(encoding="utf-8") == "x" and not (tmp_path / "o").exists()


def test_help_and_a_missing_command_stay_clicks() -> None:
    assert succeeded(invoke("link", "--help")).output.startswith("Usage: main link [OPTIONS]")
    for args in ([], ["--debug"]):  # no command: click's usage block lists the commands
        result = invoke(*args)
        assert result.exit_code == 2 and result.output.startswith("Usage: main [OPTIONS] COMMAND [ARGS]...")
        assert "[E2" not in result.output


@pytest.mark.parametrize("command", [[], ["run"], ["triage"], ["encode"], ["train"], ["evaluate"], ["score"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = succeeded(invoke(*command, "--help"))
    assert "Usage:" in result.output
    if command and command[0] != "score":
        assert "--config" in result.output and "--set" in result.output and "--force" in result.output
        assert "--run-dir" in result.output
    if not command:
        for name in ("run", "triage", "encode", "train", "evaluate", "score"):
            assert name in result.output


def test_score_prints_the_documented_json(tmp_path: Path) -> None:
    gold = tmp_path / "gold.tab"
    system = tmp_path / "system.tab"
    gold.write_text(
        "gold\tM1\tObama\tENG_NW_1:0-4\tQ1\tPER\tNAM\t1.0\n"
        "gold\tM2\tKlara\tENG_NW_1:10-14\tNIL0001\tPER\tNAM\t1.0\n"
        "gold\tM3\t默克尔\tCMN_NW_1:0-2\tQ2\tPER\tNAM\t1.0\n",
        encoding="utf-8",
    )
    system.write_text(
        "xel\tM1\tObama\tENG_NW_1:0-4\tQ1\tPER\tNAM\t1.0\n"
        "xel\tM2\tKlara\tENG_NW_1:10-14\tNIL0007\tPER\tNAM\t1.0\n"
        "xel\tM3\t默克尔\tCMN_NW_1:0-2\tQ9\tPER\tNAM\t1.0\n",
        encoding="utf-8",
    )
    result = succeeded(invoke("score", gold, system, "--json"))
    report = json.loads(result.stdout)  # logging goes to stderr; stdout is only the JSON
    assert set(report) == {"overall", "by_language", "counts"}
    assert set(report["by_language"]) == {"en", "zh"}
    for group in [report["overall"], *report["by_language"].values()]:
        assert set(group) == {*MEASURES, MICRO_AVERAGE}
        for measure in MEASURES:
            assert set(group[measure]) == {"precision", "recall", "f1"}
    assert report["overall"][MICRO_AVERAGE]["micro_average"] == pytest.approx(2 / 3)
    assert report["by_language"]["en"][MICRO_AVERAGE]["micro_average"] == 1.0
    assert report["by_language"]["zh"][MICRO_AVERAGE]["micro_average"] == 0.0
    assert report["counts"]["overall"]["gold_mentions"] == 3

    table = succeeded(invoke("score", gold, system))
    assert "kbp2010_micro_average" in table.output and "zh" in table.output

    system.write_text("xel\tM1\tObama\tENG_NW_1:0-4\tQ1\tPER\tNAM\t1.0\n", encoding="utf-8")
    mismatch = invoke("score", gold, system)
    assert mismatch.exit_code == 2 and "Error: [E601]" in mismatch.output
    lenient = succeeded(invoke("score", gold, system, "--json", "--lenient"))
    assert json.loads(lenient.stdout)["overall"][MICRO_AVERAGE]["micro_average"] == pytest.approx(1 / 3)


def test_score_on_the_run_own_tab_files_keeps_the_languages(base_run: dict, tmp_path: Path) -> None:
    # The tiny doc ids (en-d1, ru-d3, ...) do not say their language; doc_languages.tsv does.
    evaluate_dir = base_run["run_dir"] / "evaluate"
    metrics = json.loads((evaluate_dir / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["by_language"]) == {"en", "es", "ru"}
    assert (evaluate_dir / "doc_languages.tsv").read_text(encoding="utf-8").splitlines()[:3] == [
        "doc_id\tlang",
        "en-d4\ten",
        "es-d3\tes",
    ]
    report = json.loads(
        succeeded(invoke("score", evaluate_dir / "gold.tab", evaluate_dir / "system.tab", "--json")).stdout
    )
    assert report["by_language"] == metrics["by_language"] and report["overall"] == metrics["overall"]
    table = succeeded(invoke("score", evaluate_dir / "gold.tab", evaluate_dir / "system.tab")).stdout
    assert [line.split()[0] for line in table.split("\n\n")[0].splitlines()[1:]] == ["overall", "en", "es", "ru"]

    # Copied without the side file: 'unknown', with a warning that says what to give.
    for name in ("gold.tab", "system.tab"):
        shutil.copy(evaluate_dir / name, tmp_path / name)
    alone = succeeded(invoke("score", tmp_path / "gold.tab", tmp_path / "system.tab", "--json"))
    assert set(json.loads(alone.stdout)["by_language"]) == {"unknown"}
    assert "[W220] 4 document(s)" in alone.stderr and "--languages" in alone.stderr
    shutil.copy(evaluate_dir / "doc_languages.tsv", tmp_path / "languages.tsv")
    given = succeeded(
        invoke(
            "score", tmp_path / "gold.tab", tmp_path / "system.tab", "--json", "--languages", tmp_path / "languages.tsv"
        )
    )
    assert json.loads(given.stdout)["by_language"] == metrics["by_language"]
    assert "W220" not in given.stderr


def test_train_resumes_from_its_checkpoint(base_run: dict, run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(run_copy / "train")
    shutil.rmtree(run_copy / "evaluate")
    real_sample = pipeline.train.batches.sample_negatives
    calls = {"n": 0}

    def killed_in_epoch_5(*args, **kwargs):
        # 5 training mentions in batches of 4: two steps per epoch; step 9 is epoch 5's first.
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt("simulated kill")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(pipeline.train.batches, "sample_negatives", killed_in_epoch_5)
    interrupted = invoke("train", "--config", base_run["config"], "--run-dir", run_copy)
    # Ctrl-C: one line saying what was kept and how to resume, exit 130 (issue 21 item 16).
    assert interrupted.exit_code == 130 and interrupted.output == (
        "Interrupted: train keeps its last checkpoint (train.checkpoint_every epochs, or train.checkpoint_minutes); "
        f"run `xel-cli train --config {base_run['config']} --run-dir {run_copy}` again to resume.\n"
    ), interrupted.output
    train_dir = run_copy / "train"
    assert (train_dir / "checkpoints" / "last.pt").is_file()
    assert not (train_dir / "model.pt").exists() and not (train_dir / "manifest.json").exists()
    checkpoint = torch.load(train_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 4 and len(checkpoint["history"]) == 4
    kept_checkpoint = (train_dir / "checkpoints" / "last.pt").read_bytes()

    monkeypatch.setattr(pipeline.train.batches, "sample_negatives", real_sample)
    resumed = succeeded(invoke("train", "--config", base_run["config"], "--run-dir", run_copy))
    assert "resuming training at epoch 5" in resumed.output
    assert pl.read_parquet(train_dir / "history.parquet")["epoch"].to_list() == [1, 2, 3, 4, 5, 6]
    # Resuming restores weights, optimiser and random state: the result is the uninterrupted one.
    assert same_state(state_dict(train_dir / "model.pt"), state_dict(base_run["run_dir"] / "train" / "model.pt"))
    assert pl.read_parquet(train_dir / "history.parquet").equals(
        pl.read_parquet(base_run["run_dir"] / "train" / "history.parquet")
    )

    assert not (train_dir / "checkpoints").exists()  # deleted once the manifest is written

    # A checkpoint of other settings is not resumed from.
    (train_dir / "checkpoints").mkdir()
    (train_dir / "checkpoints" / "last.pt").write_bytes(kept_checkpoint)
    other = succeeded(
        invoke("train", "--config", base_run["config"], "--run-dir", run_copy, "--set", "train.margin=0.5")
    )
    assert "resuming training" not in other.output and "ignoring checkpoint" in other.output


def test_train_checkpoints_within_minutes_whatever_checkpoint_every(
    base_run: dict, run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With checkpoint_every beyond the run's epochs, train still checkpoints once checkpoint_minutes
    have passed (issue 21 item 16: the first checkpoint within minutes); a kill then resumes from it."""
    import pipeline.train.stage as train_stage

    shutil.rmtree(run_copy / "train")
    shutil.rmtree(run_copy / "evaluate")
    ticks = iter(range(0, 10**6, 600))  # every look at the clock: ten more minutes
    monkeypatch.setattr(train_stage, "_clock", lambda: float(next(ticks)))
    real_sample = pipeline.train.batches.sample_negatives
    calls = {"n": 0}

    def killed_in_epoch_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(pipeline.train.batches, "sample_negatives", killed_in_epoch_5)
    interrupted = invoke(
        "train",
        "--config",
        base_run["config"],
        "--run-dir",
        run_copy,
        "--set",
        "train.checkpoint_every=1000",
        "--set",
        "train.checkpoint_minutes=5",
    )
    assert interrupted.exit_code == 130
    checkpoint = torch.load(run_copy / "train" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 4
    config = train_stage.TrainConfig(epochs=500, checkpoint_every=50, checkpoint_minutes=5)
    assert [
        train_stage.checkpoint_due(epoch, seconds, config)
        for epoch, seconds in ((1, 299.0), (1, 300.0), (50, 0.0), (500, 0.0), (7, 1e6))
    ] == [False, True, True, True, True]
    assert not train_stage.checkpoint_due(7, 1e6, train_stage.TrainConfig(checkpoint_minutes=0))


def test_ctrl_c_says_in_one_line_what_was_kept_and_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.link.run

    def interrupted(options):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.link.run, "run", interrupted)
    result = invoke(
        "link", "--model", tmp_path / "model", "--mentions", tmp_path / "m 1.jsonl", "--out", tmp_path / "out"
    )
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.output == (
        f"Interrupted: link keeps its finished chunks in --out; run `xel-cli link --model {tmp_path}/model "
        f"--mentions '{tmp_path}/m 1.jsonl' --out {tmp_path}/out` again to resume.\n"
    )
    assert not (tmp_path / "out").exists()  # nothing linked: the folder link made is gone again

    # With --force, the command that resumes is without it: a rerun with --force would delete the finished
    # chunks (before: the hint repeated --force, and the rerun resumed nothing; fresh21b 5f).
    forced = invoke(
        "link", "--model", tmp_path / "model", "--mentions", tmp_path / "m.jsonl", "--force", "--out", tmp_path / "o"
    )
    assert forced.exit_code == 130 and forced.output == (
        f"Interrupted: link keeps its finished chunks in --out; run `xel-cli link --model {tmp_path}/model "
        f"--mentions {tmp_path}/m.jsonl --out {tmp_path}/o` again to resume (without --force, which would start over).\n"
    ), forced.output


def test_same_seed_gives_identical_models(base_run: dict, tmp_path: Path) -> None:
    config = write_run_config(tmp_path, base_run["encoder"])
    succeeded(invoke("run", "--config", config))
    fresh, base = tmp_path / "run", base_run["run_dir"]
    assert same_state(state_dict(fresh / "train" / "model.pt"), state_dict(base / "train" / "model.pt"))
    assert pl.read_parquet(fresh / "evaluate" / "scores.parquet").equals(
        pl.read_parquet(base / "evaluate" / "scores.parquet")
    )
    assert (fresh / "evaluate" / "system.tab").read_bytes() == (base / "evaluate" / "system.tab").read_bytes()
    # Another seed gives another model.
    succeeded(invoke("train", "--config", config, "--set", "train.seed=14"))
    assert not same_state(state_dict(fresh / "train" / "model.pt"), state_dict(base / "train" / "model.pt"))


def test_a_changed_setting_says_what_it_replaces(base_run: dict, run_copy: Path) -> None:
    result = succeeded(
        invoke(
            "evaluate",
            "--config",
            base_run["config"],
            "--run-dir",
            run_copy,
            "--set",
            "evaluate.nil_clustering=singleton",
        )
    )
    replaced = [line for line in result.output.splitlines() if "replacing" in line]
    assert len(replaced) == 1
    assert "evaluate: replacing scores.parquet, predictions.parquet" in replaced[0]
    assert replaced[0].endswith("nil_clustering: name -> singleton")


def test_no_config_is_a_coded_error_not_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("run")
    assert result.exit_code == 2 and result.output.startswith("Error: [E205] no --config given")
    assert not (tmp_path / "artifacts").exists()  # nothing was run in the working folder


def test_default_run_folder_sits_beside_the_config(
    make_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.core.config_file import load_config

    config_path = make_run_config(run_dir=None)
    assert "run_dir" not in config_path.read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path.parent)  # another working folder must not move the run
    config = load_config(config_path)
    assert config.run_dir == config_path.resolve().parent / "artifacts" / config.name


def test_help_lists_commands_in_pipeline_order() -> None:
    help_text = invoke("--help").output
    listed = re.findall(r"^  (\w+)\s", help_text.split("Commands:")[1], flags=re.MULTILINE)
    assert listed == [
        "run",
        "triage",
        "encode",
        "train",
        "rerank",
        "evaluate",
        "link",
        "export",
        "score",
        "search",
        "experiment",
    ]
    # The description's first line names every stage in the order `run` runs them (it lacked rerank).
    from pipeline.stages import STAGES

    description = " ".join(help_text.split("\n\n")[1].split())
    assert description.startswith("Cross-language entity linking: " + " -> ".join(STAGES) + " ("), help_text


@pytest.mark.parametrize(
    "command, new, old", [("score", "--doc-languages", "--languages"), ("experiment", "--seed-count", "--seeds")]
)
def test_renamed_options_show_the_new_name_and_hide_the_old_one(command: str, new: str, old: str) -> None:
    help_text = invoke(command, "--help").output
    assert new in help_text and f"{old} " not in help_text


def test_export_takes_run_dir_and_out_options(tmp_path: Path) -> None:
    missing = invoke("export", "--out", tmp_path / "out")
    assert missing.exit_code == 2 and "[E207]" in missing.output and "--run-dir" in missing.output
    absent = invoke("export", "--run-dir", tmp_path / "no-run", "--out", tmp_path / "out")
    assert absent.exit_code == 2 and "--run-dir: Directory" in absent.output


@pytest.mark.parametrize(
    "stage, setting, code",
    [
        ("triage", "inputs.mentions={bad_mentions}", "E103"),  # a record of an unknown split
        ("encode", "encoder.name_layer=9", "E203"),  # past the encoder's layers: found once it is loaded
        ("train", "train.train_languages=de", "E112"),  # no training mention of that language
        ("evaluate", "evaluate.nil_method=nota", "E203"),  # the ranker has no NIL option
    ],
)
def test_a_refused_stage_keeps_its_finished_outputs(
    base_run: dict, run_copy: Path, tmp_path: Path, stage: str, setting: str, code: str
) -> None:
    """A stage refused for what it finds while reading its inputs (or loading its encoder, or choosing its NIL
    method) leaves its finished outputs as they were, manifest included, so it is up to date again without the
    bad setting (before: the manifest was removed first, and the finished stage had to be redone)."""
    bad_mentions = write_jsonl(
        tmp_path / "bad.jsonl", [{**record, "split": "validation"} for record in tiny_mention_records()]
    )
    before = {p: p.read_bytes() for p in (run_copy / stage).rglob("*") if p.is_file()}
    args = [stage, "--config", base_run["config"], "--run-dir", run_copy]
    result = invoke(*args, "--set", setting.format(bad_mentions=bad_mentions), exit_code=2)
    assert f"Error: [{code}] " in result.output and "Traceback" not in result.output, result.output
    assert {p: p.read_bytes() for p in (run_copy / stage).rglob("*") if p.is_file()} == before
    assert f"{stage}: up to date" in succeeded(invoke(*args)).output


def test_every_command_says_what_an_interrupt_keeps() -> None:
    """Ctrl-C's line names what each stage keeps (rerank's checkpoint too), and run's names every stage that
    keeps unfinished work."""
    from cli import INTERRUPTED_KEEPS
    from pipeline.stages import STAGES

    assert set(STAGES) <= set(INTERRUPTED_KEEPS)
    for stage in STAGES:
        assert INTERRUPTED_KEEPS[stage].startswith(f"{stage} keeps ")
    for stage, kept in (("encode", "finished chunks"), ("train", "checkpoint"), ("rerank", "checkpoint")):
        assert kept in INTERRUPTED_KEEPS[stage] and stage in INTERRUPTED_KEEPS["run"], stage
