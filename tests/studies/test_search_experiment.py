"""`xel-cli search` and `xel-cli experiment` on the tiny inputs with the tiny encoder.

One triage + encode per module (the base run), copied per test: what is checked is the
bookkeeping (sub-runs share the base run's stages, finished work is not redone, tables
are complete and averaged), not linking quality. Epochs are cut to 2 to keep it fast.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from conftest import invoke as cli_invoke
from conftest import write_run_config
from pipeline.core.config_file import load_config
from pipeline.core.errors import ConfigError
from pipeline.core.manifest import read_manifest as manifest
from pipeline.studies.experiment import (
    PAPER_FEATURES,
    TABLE_1_COLUMNS,
    TABLE_4_ROWS,
    ExperimentConfig,
    Model,
    check_only,
    format_cell,
    parse_only,
    plan,
    sub_runs,
)
from pipeline.studies.search import SEARCH_SPACE, LogUniform, draw_settings

FAST = ("--set", "train.epochs=2", "--set", "train.eval_every=1")
# The tiny reader: one epoch over the top 3 candidates.
TINY_READER = tuple(
    arg
    for setting in (
        "rerank.top_k=3",
        "rerank.max_seq_tokens=80",
        "rerank.max_context_tokens=24",
        "rerank.epochs=1",
        "rerank.batch_mentions=4",
    )
    for arg in ("--set", setting)
)
LANGUAGES = ["en", "es", "ru"]


# Every call here is expected to succeed.
invoke = functools.partial(cli_invoke, exit_code=0)


@pytest.fixture(autouse=True)
def no_threshold_plots(monkeypatch) -> None:
    """evaluate draws thresholds.png with matplotlib (~0.5 s each), once per sub-run: an empty file will do here."""
    from pipeline.evaluate import stage as evaluate

    monkeypatch.setattr(evaluate, "plot_sweep", lambda sweep_table, thresholds, path: path.write_bytes(b""))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    folder = tmp_path_factory.mktemp("search-run")
    config = write_run_config(folder, tiny_encoder_dir)
    invoke("triage", "--config", config)
    invoke("encode", "--config", config)
    return {"config": config, "run_dir": folder / "run"}


# --- sub-runs ----------------------------------------------------------------------------------


def test_stage_links_are_relative_kept_repointed_and_never_replace_a_folder(tmp_path: Path) -> None:
    from pipeline.core.errors import CacheError
    from pipeline.studies.subrun import link_stage

    (tmp_path / "run" / "encode").mkdir(parents=True)
    (tmp_path / "other" / "encode").mkdir(parents=True)
    link = tmp_path / "run" / "sub" / "encode"
    link_stage(link, tmp_path / "run" / "encode")
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    link_stage(link, tmp_path / "run" / "encode")  # already right: kept
    link_stage(link, tmp_path / "other" / "encode")
    assert link.resolve() == (tmp_path / "other" / "encode").resolve()
    real = tmp_path / "run" / "sub2" / "encode"
    real.mkdir(parents=True)
    with pytest.raises(CacheError, match=r"E410.*sub2/encode"):
        link_stage(real, tmp_path / "run" / "encode")


# --- search ------------------------------------------------------------------------------------


def test_draws_come_from_the_space_and_do_not_depend_on_the_trial_count() -> None:
    draws = [draw_settings(7, trial) for trial in range(30)]
    for settings in draws:
        assert settings.keys() == SEARCH_SPACE.keys()
        for key, value in settings.items():
            space = SEARCH_SPACE[key]
            assert space.low <= value <= space.high if isinstance(space, LogUniform) else value in space
    assert draw_settings(7, 3) == draws[3] and draw_settings(8, 3) != draws[3]
    assert len({s["learning_rate"] for s in draws}) > 10  # continuous, not a handful of values


def test_search_ranks_trials_on_dev_skips_finished_ones_and_writes_a_usable_best(
    base_run: dict, run_copy: Path
) -> None:
    invoke("search", "--config", base_run["config"], "--run-dir", run_copy, "--trials", 2, "--seed", 5, *FAST)
    search_dir = run_copy / "search"
    first = {t: manifest(search_dir / "seed-5" / f"trial-{t:03d}" / "train")["finished"] for t in (0, 1)}
    result = invoke("search", "--config", base_run["config"], "--run-dir", run_copy, "--trials", 3, "--seed", 5, *FAST)
    assert "3 trial(s), 1 trained now" in result.output
    for trial, finished in first.items():  # not retrained
        assert manifest(search_dir / "seed-5" / f"trial-{trial:03d}" / "train")["finished"] == finished

    table = pl.read_parquet(search_dir / "search.parquet")
    assert sorted(table["trial"].to_list()) == [0, 1, 2]
    # Ranked by dev micro-average: the first row is the best, and the number is the trial's own dev score.
    assert table["dev_micro_average"].to_list() == sorted(table["dev_micro_average"].to_list(), reverse=True)
    best = table.row(0, named=True)
    trial_dir = run_copy / best["folder"]
    metrics = json.loads((trial_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["split"] == "dev"
    assert best["dev_micro_average"] == pytest.approx(metrics["overall"]["kbp2010_micro_average"]["micro_average"])
    # Trials share the base run's triage and encode: links, no copies and no second encode.
    assert (trial_dir / "encode").is_symlink() and (trial_dir / "encode").resolve() == (run_copy / "encode").resolve()
    assert "search.md" in {p.name for p in search_dir.iterdir()}

    best_config = load_config(search_dir / "best.toml")
    drawn = draw_settings(5, best["trial"])
    assert {key: getattr(best_config.train, key) for key in drawn} == drawn
    assert best_config.evaluate.eval_split == "test"  # the run's own evaluation, not the search's dev scoring
    assert best_config.inputs == load_config(base_run["config"]).inputs


def test_search_picks_the_trial_with_the_best_dev_score(base_run: dict, run_copy: Path, monkeypatch) -> None:
    # Dev scores made up per trial (no training): the ranking and best.toml must follow them.
    from pipeline.studies import search

    made_up = {0: 0.2, 1: 0.9, 2: 0.5}

    def fake_train_and_evaluate(config, train_too=True):
        score = made_up[int(config.run_dir.name.split("-")[1])]
        return {
            "metrics": {"overall": {"kbp2010_micro_average": {"micro_average": score}}},
            "trained": True,
            "evaluated": True,
            "seconds": 0.0,
        }

    monkeypatch.setattr(search.subrun, "train_and_evaluate", fake_train_and_evaluate)
    result = invoke("search", "--config", base_run["config"], "--run-dir", run_copy, "--trials", 3)
    assert "best trial 1" in result.output
    table = pl.read_parquet(run_copy / "search" / "search.parquet")
    assert table["trial"].to_list() == [1, 2, 0] and table["place"].to_list() == [1, 2, 3]
    best = load_config(run_copy / "search" / "best.toml")
    assert best.train.learning_rate == draw_settings(0, 1)["learning_rate"]


# --- experiment ----------------------------------------------------------------------------------


def test_plan_shares_models_between_tables() -> None:
    cells = plan(LANGUAGES, ExperimentConfig(triage_row=True))
    assert len(cells) == 3 * 5 + 3 * 3 + 4 * 3
    mono_en = Model(train_languages=("en",))
    users = {(c.table, c.row, c.column) for c in cells if c.model == mono_en}
    assert users == {
        (1, "en", "Mono"),
        *{(2, "en", lang) for lang in LANGUAGES},
        *{(3, " + ".join(PAPER_FEATURES), lang) for lang in LANGUAGES},
    }
    pairs = sub_runs(cells, [1, 2])
    models = [model for model, _ in pairs]
    # nn once; per seed: mono x3, multids x3, multi, multi+oracle, name, name+context, +triage = 11.
    assert models.count(Model(baseline="nn")) == 1 and len(pairs) == 1 + 2 * 11
    assert len(set(pairs)) == len(pairs)
    for seed in (1, 2):  # the oracle sub-run links its seed's Multi model: Multi comes first
        assert pairs.index((Model(), seed)) < pairs.index((Model(oracle=True), seed))
    assert [p[1] for p in pairs[1:]] == sorted(p[1] for p in pairs[1:])  # seed-major: whole seeds first


@pytest.mark.parametrize(
    ("values", "expected", "text"),
    [
        ([0.5, 0.7], 2, "0.600 ± 0.141"),
        ([0.5], 2, "0.500 (1/2)"),
        ([], 3, "—"),
        ([0.25], 1, "0.250"),
    ],
)
def test_format_cell(values, expected, text) -> None:
    assert format_cell(values, expected) == text


def experiment_rows(tables: str, heading: str) -> dict[str, list[str]]:
    """{row label: cells} of the Markdown table under `heading`."""
    part = tables.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in part.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_experiment_fills_every_cell_shares_models_and_resumes(base_run: dict, run_copy: Path) -> None:
    args = ("experiment", "--config", base_run["config"], "--run-dir", run_copy, "--seeds", 2, *FAST)
    invoke(*args)
    experiment_dir = run_copy / "experiment"
    tables = (experiment_dir / "tables.md").read_text(encoding="utf-8")
    every_cell = [
        cell
        for heading in ("## Table 1", "## Table 2", "## Table 3")
        for cells in experiment_rows(tables, heading).values()
        for cell in cells
    ]
    assert every_cell and not [cell for cell in every_cell if cell == "—" or "/2)" in cell]  # every cell, every seed
    table_1 = experiment_rows(tables, "## Table 1")
    assert set(table_1) == set(LANGUAGES) and all(len(cells) == len(TABLE_1_COLUMNS) for cells in table_1.values())
    assert all("±" in cell for cells in table_1.values() for cell in cells[1:])  # seeded: mean ± std
    assert all("±" not in cells[0] for cells in table_1.values())  # NN: one run
    assert set(experiment_rows(tables, "## Table 3")) == {
        "name",
        "name + context",
        "name + context + type",
        "name + context + type + triage",
    }

    cells = pl.read_parquet(experiment_dir / "cells.parquet")
    # Mono-en is one model per seed, read by Table 1, Table 2's en row and Table 3's paper-features row.
    mono_en = cells.filter(pl.col("folder") == "mono-en")
    assert set(mono_en["table"].to_list()) == {1, 2, 3}
    assert sorted((experiment_dir / "mono-en").iterdir()) == [
        experiment_dir / "mono-en" / f"seed-{s}" for s in (13, 14)
    ]
    same = mono_en.filter(pl.col("language") == "en").group_by("seed").agg(pl.col("micro_average").n_unique())
    assert same["micro_average"].to_list() == [1, 1]
    # Mean ± std of a cell is over the seeds' own scores.
    es = cells.filter((pl.col("table") == 2) & (pl.col("row") == "en") & (pl.col("column") == "es"))["micro_average"]
    assert experiment_rows(tables, "## Table 2")["en"][1] == format_cell(es.to_list(), 2)
    assert len(es) == 2 and np.isfinite(es.to_numpy()).all()

    # Multi+Or: the Multi model of the seed, scored with oracle triage (one extra triage, no training, no encode).
    oracle = experiment_dir / "multi-oracle" / "seed-13"
    assert (oracle / "train").resolve() == (experiment_dir / "multi" / "seed-13" / "train").resolve()
    assert (oracle / "encode").resolve() == (run_copy / "encode").resolve()
    assert manifest(oracle / "triage")["settings"]["triage"]["oracle"] is True
    assert json.loads((oracle / "config.json").read_text(encoding="utf-8"))["triage"]["oracle"] is True
    assert not (oracle / "train" / "..").resolve().name.startswith("multi-oracle")

    # A stopped experiment resumes: lose one sub-run, rerun, only it is trained again.
    shutil.rmtree(experiment_dir / "multids-es" / "seed-14")
    mono_finished = manifest(experiment_dir / "mono-en" / "seed-14" / "train")["finished"]
    result = invoke(*args)
    assert "1 trained now" in result.output
    assert manifest(experiment_dir / "mono-en" / "seed-14" / "train")["finished"] == mono_finished
    assert (experiment_dir / "tables.md").read_text(encoding="utf-8").split("## Table 1")[1] == tables.split(
        "## Table 1"
    )[1]


def test_experiment_tables_mark_missing_cells(base_run: dict, run_copy: Path, monkeypatch) -> None:
    # Stop after three sub-runs (NN, then seed 13's Mono-en and MultiDS-en): later cells are marked.
    from pipeline.studies import experiment

    real = experiment.subrun.train_and_evaluate
    calls = {"n": 0}

    def stop_after_three(config, train_too=True):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(config, train_too)

    monkeypatch.setattr(experiment.subrun, "train_and_evaluate", stop_after_three)
    result = CliRunner().invoke(
        main,
        [
            str(a)
            for a in (
                "experiment",
                "--config",
                base_run["config"],
                "--run-dir",
                run_copy,
                "--seeds",
                2,
                "--no-triage-row",
                *FAST,
            )
        ],
    )
    assert result.exit_code != 0
    tables = (run_copy / "experiment" / "tables.md").read_text(encoding="utf-8")
    table_1 = experiment_rows(tables, "## Table 1")
    assert table_1["en"][0] != "—" and "(1/2)" in table_1["en"][1]  # NN done; Mono-en: one seed of two
    assert "(1/2)" in table_1["en"][2] and table_1["en"][3] == "—"  # MultiDS-en: one seed; Multi: not reached
    assert table_1["es"][1] == "—"
    assert "name + context + type + triage" not in tables


def test_experiment_refuses_an_ablation_language_outside_the_tables(base_run: dict, run_copy: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["experiment", "--config", str(base_run["config"]), "--run-dir", str(run_copy), "--ablation-language", "xx"],
    )
    assert result.exit_code == 2 and "[E203]" in result.output and "ablation_language" in result.output
    assert not (run_copy / "experiment").exists()


def test_only_keeps_the_asked_cells_and_refuses_bad_ones() -> None:
    multi = plan(LANGUAGES, ExperimentConfig(only=((1, "Multi"),)))
    assert [(c.table, c.row, c.column) for c in multi] == [(1, lang, "Multi") for lang in LANGUAGES]
    assert {model for model, _ in sub_runs(multi, [1, 2, 3])} == {Model()}  # one model, trained once per seed
    oracle = plan(LANGUAGES, ExperimentConfig(only=((1, "Multi+Or"),)))
    assert [model for model, _ in sub_runs(oracle, [1])] == [Model(), Model(oracle=True)]  # its weights are Multi's
    table_2 = plan(LANGUAGES, ExperimentConfig(only=((2, None),)))
    assert len(table_2) == 9 and {c.table for c in table_2} == {2}
    with pytest.raises(ConfigError, match=r"\[E203\].*only"):
        ExperimentConfig(only=((1, "Best"),))
    with pytest.raises(ConfigError, match=r"\[E203\].*only"):
        parse_only(("one:Multi",))
    assert parse_only(("1:Multi", "3")) == ((1, "Multi"), (3, None))
    with pytest.raises(ConfigError, match=r"\[E203\].*only"):
        parse_only(("1:",))  # an empty column is a slip, not "the whole table"
    check_only(LANGUAGES, ExperimentConfig(only=((2, "es"), (1, None))))
    # Language columns and settings are read as the inputs' languages are (en-US -> en).
    assert ExperimentConfig(only=((2, "ES"), (3, "es-419"))).only == ((2, "es"), (3, "es"))
    assert ExperimentConfig(languages=("en-US", "IT", "EN")).languages == ("en", "it")
    assert ExperimentConfig(ablation_language="EN_gb").ablation_language == "en"
    with pytest.raises(ConfigError, match=r"\[E203\].*languages"):
        ExperimentConfig(languages=("",))
    for only in ((2, "Multi"), (3, "xx")):  # Tables 2 and 3 have languages as columns
        with pytest.raises(ConfigError, match=r"\[E203\].*has no column"):
            check_only(LANGUAGES, ExperimentConfig(only=(only,)))


def test_experiment_refuses_a_language_without_training_mentions(base_run: dict, run_copy: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "experiment",
            "--config",
            str(base_run["config"]),
            "--run-dir",
            str(run_copy),
            "--languages",
            "en,xx",
            "--only",
            "1:Multi",
        ],
    )
    assert result.exit_code == 2 and "[E203]" in result.output and "xx" in result.output, result.output
    assert not (run_copy / "experiment" / "multi").exists()


def test_experiment_only_multi_trains_one_model_per_seed(base_run: dict, run_copy: Path) -> None:
    result = invoke(
        "experiment", "--config", base_run["config"], "--run-dir", run_copy, "--seeds", 2, "--only", "1:Multi", *FAST
    )
    assert "2 sub-run(s), 2 trained now" in result.output
    experiment_dir = run_copy / "experiment"
    assert sorted(path.name for path in experiment_dir.iterdir() if path.is_dir()) == ["multi"]
    tables = (experiment_dir / "tables.md").read_text(encoding="utf-8")
    table_1 = experiment_rows(tables, "## Table 1")
    assert set(table_1) == set(LANGUAGES) and all(len(cells) == 1 and "±" in cells[0] for cells in table_1.values())
    assert "| language | Multi |" in tables
    assert tables.count("(not asked for: see --only)") == 2  # Tables 2 and 3


# --- experiment: the reader (Table 4) --------------------------------------------------------------


def test_the_reader_row_plans_the_multi_ranker_alone_and_with_the_reader() -> None:
    assert not [c for c in plan(LANGUAGES, ExperimentConfig()) if c.table == 4]  # off unless asked for
    cells = plan(LANGUAGES, ExperimentConfig(reader_row=True, only=((4, None),)))
    assert [(c.row, c.column) for c in cells] == [(row, lang) for row in TABLE_4_ROWS for lang in LANGUAGES]
    assert {c.model for c in cells if c.row == "ranker"} == {Model()}  # Table 1's Multi: no extra sub-run
    reader = Model(reader=True)
    assert reader.folder == "multi-reader" and reader.linked and reader.trained() == Model()
    # Per seed: the Multi ranker first (the reader's sub-run links its train/), then the reader.
    assert sub_runs(cells, [1, 2]) == [(Model(), 1), (reader, 1), (Model(), 2), (reader, 2)]
    assert len(plan(LANGUAGES, ExperimentConfig(reader_row=True))) == 3 * 5 + 3 * 3 + 4 * 3 + 2 * 3
    assert ExperimentConfig(reader_row=True, only=((4, "ES"),)).only == ((4, "es"),)
    with pytest.raises(ConfigError, match=r"\[E203\].*--reader-row"):
        check_only(LANGUAGES, ExperimentConfig(only=((4, None),)))
    with pytest.raises(ConfigError, match=r"\[E203\].*has no column"):
        check_only(LANGUAGES, ExperimentConfig(reader_row=True, only=((4, "Multi"),)))


def test_experiment_reads_the_tables_with_and_without_the_reader(base_run: dict, run_copy: Path) -> None:
    """`--only 4` with the reader on ([rerank] enabled = true: Table 4 by default): per seed the Multi ranker
    trains once, a reader is fine-tuned over it in its own sub-run, and the table holds both rows."""
    args = ("experiment", "--config", base_run["config"], "--run-dir", run_copy, "--seeds", 2, "--only", "4")
    result = invoke(*args, *FAST, *TINY_READER, "--set", "rerank.enabled=true")
    assert "4 sub-run(s), 4 trained now" in result.output
    experiment_dir = run_copy / "experiment"
    tables = (experiment_dir / "tables.md").read_text(encoding="utf-8")
    table_4 = experiment_rows(tables, "## Table 4")
    assert list(table_4) == list(TABLE_4_ROWS)
    assert all(len(cells) == len(LANGUAGES) and all("±" in cell for cell in cells) for cells in table_4.values())
    assert "| Multi | en | es | ru |" in tables and "epoch(s)" in tables  # the reader's settings are stated
    cells = pl.read_parquet(experiment_dir / "cells.parquet")
    assert set(cells["folder"]) == {"multi", "multi-reader"} and cells.height == 2 * 2 * len(LANGUAGES)

    for seed in (13, 14):
        ranker, reader = (experiment_dir / folder / f"seed-{seed}" for folder in ("multi", "multi-reader"))
        assert (reader / "train").resolve() == (ranker / "train").resolve()  # the reader's over that ranker
        assert not (ranker / "rerank").exists()  # the ranker's sub-run runs no reader
        assert manifest(reader / "rerank")["settings"]["seed"] == seed  # [rerank] seed 13 + the seed's offset from 13
        metrics = [json.loads((run / "evaluate" / "metrics.json").read_text()) for run in (ranker, reader)]
        assert metrics[1]["nil_method"] == "reader" and metrics[0]["nil_method"] != "reader"
        for language in LANGUAGES:
            values = cells.filter((pl.col("seed") == seed) & (pl.col("language") == language)).sort("row")
            assert values["micro_average"].to_list() == [
                metric["by_language"][language]["kbp2010_micro_average"]["micro_average"] for metric in metrics
            ]

    # Resumed: nothing is trained again; without the reader on, Table 4 must be asked for.
    assert "0 trained now" in invoke(*args, *FAST, *TINY_READER, "--reader-row").output
    refused = CliRunner().invoke(main, [str(a) for a in (*args, *FAST)])
    assert refused.exit_code == 2 and "[E203]" in refused.output and "--reader-row" in refused.output
