"""search: a small random search over the paper's ranker settings (Appendix A), best on dev.

`SEARCH_SPACE` is the paper's Appendix A space as one table. Trial i of seed S draws
each setting independently from it with a generator seeded by (S, i), so trial i is
the same whatever the number of trials: asking for more trials later adds trials and
keeps the finished ones. Each trial is a sub-run (`pipeline.studies.subrun`) in
`<run>/search/seed-<S>/trial-<iii>/` that reuses the run's triage and encode outputs,
trains with the drawn settings and evaluates on the dev split (NIL thresholds tuned on
dev too): the test split is never looked at. Finished trials skip themselves through
their stage manifests, so a killed search resumes where it was.

Outputs in `<run>/search/`: `search.parquet` and `search.md` (the trials ranked by dev
KBP2010 micro-average), and `best.toml`, the run's config with the best trial's
settings, ready for `xel-cli run`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.core.config import RunConfig, to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.io import write_parquet_atomic, write_text_atomic
from pipeline.core.manifest import StageResult, read_manifest
from pipeline.core.progress import track
from pipeline.studies import subrun

logger = logging.getLogger(__name__)

STAGE = "search"


@dataclass(frozen=True)
class LogUniform:
    """A number drawn uniformly on a log scale between low and high (rounded to 2 significant digits)."""

    low: float
    high: float

    def draw(self, generator: np.random.Generator) -> float:
        value = math.exp(generator.uniform(math.log(self.low), math.log(self.high)))
        return float(f"{value:.2g}")


# The paper's Appendix A search space; keys are [train] settings. The paper lists one set of
# sizes for the context and mention-name MLPs; each is drawn on its own here.
PAIR_SIZES = ((768,), (512,), (256,), (512, 256))
SEARCH_SPACE: dict[str, tuple | LogUniform] = {
    "name_hidden": PAIR_SIZES,
    "context_hidden": PAIR_SIZES,
    "type_hidden": ((128,), (64,), (32,), (16,)),
    "final_hidden": ((512, 256), (256, 128), (128, 64), (1024, 512), (512,), (256,)),
    "dropout": (0.1, 0.2, 0.5),
    "learning_rate": LogUniform(1e-5, 5e-3),
}


@dataclass(frozen=True)
class SearchConfig:
    """How many trials and which draws; the space is `SEARCH_SPACE`."""

    trials: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.trials <= 1000:
            raise ConfigError(
                "E203", where="search", field="trials", value=self.trials, reason="must be between 1 and 1000"
            )
        if self.seed < 0:
            raise ConfigError("E203", where="search", field="seed", value=self.seed, reason="must be >= 0")


def draw_settings(seed: int, trial: int, space: dict[str, tuple | LogUniform] = SEARCH_SPACE) -> dict[str, Any]:
    """Trial `trial`'s [train] settings: one independent draw per key of `space`, seeded by (seed, trial)."""
    generator = np.random.default_rng([seed, trial])
    settings: dict[str, Any] = {}
    for key, choices in space.items():
        settings[key] = (
            choices.draw(generator)
            if isinstance(choices, LogUniform)
            else choices[int(generator.integers(len(choices)))]
        )
    return settings


def trial_dir(run_dir: Path, seed: int, trial: int) -> Path:
    return run_dir / STAGE / f"seed-{seed}" / f"trial-{trial:03d}"


def ranking(rows: list[dict]) -> pl.DataFrame:
    """Trials best first: dev micro-average, then best dev linking accuracy, then trial number."""
    table = pl.DataFrame(
        rows,
        schema={
            "trial": pl.Int64,
            "dev_micro_average": pl.Float64,
            "best_dev_accuracy": pl.Float64,
            "best_epoch": pl.Int64,
            **{key: pl.String if key.endswith("_hidden") else pl.Float64 for key in SEARCH_SPACE},
            "seconds": pl.Float64,
            "folder": pl.String,
        },
    )
    return table.sort(
        ["dev_micro_average", "best_dev_accuracy", "trial"], descending=[True, True, False], nulls_last=True
    ).with_row_index("place", offset=1)


def _sizes(sizes: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(size) for size in sizes) + "]"


def search_markdown(table: pl.DataFrame, config: SearchConfig, base: RunConfig) -> str:
    columns = ["place", "trial", "dev_micro_average", "best_dev_accuracy", "best_epoch", *SEARCH_SPACE, "seconds"]
    lines = [
        f"# Random search over the paper's Appendix A space ({base.name})",
        "",
        f"{table.height} trial(s), seed {config.seed}; ranked by KBP2010 micro-average on the dev split "
        "(NIL thresholds tuned on dev). Other settings as the run's config.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for row in table.iter_rows(named=True):
        cells = [
            "—"
            if row[c] is None
            else f"{row[c]:.4f}"
            if c in ("dev_micro_average", "best_dev_accuracy")
            else f"{row[c]:.2g}"
            if c == "learning_rate"
            else f"{row[c]:.0f}"
            if c == "seconds"
            else str(row[c])
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def config_toml(config: RunConfig, header: str) -> str:
    """A TOML file `load_config` reads back into `config` (paths absolute; unset paths and run_dir left out)."""
    lines = [f"# {line}" for line in header.splitlines()] + [f"name = {_toml_value(config.name)}"]
    for section, values in to_dict(config).items():
        if not isinstance(values, dict):
            continue
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def run(config: RunConfig, search: SearchConfig) -> StageResult:
    """Triage and encode the run (skipped when up to date), then the trials, then the ranking."""
    started = time.time()
    stage_sources = subrun.run_shared_stages(config)
    rows, trained = [], 0
    for trial in track(range(search.trials), "search", "trials", postfix=lambda trial: f"trial {trial}"):
        row, outcome = _trial(config, search.seed, trial, stage_sources)
        rows.append(row)
        trained += outcome["trained"]
    table = ranking(rows)
    out_dir = config.run_dir / STAGE
    write_parquet_atomic(table, out_dir / "search.parquet")
    write_text_atomic(out_dir / "search.md", search_markdown(table, search, config))
    best_trial = int(table["trial"][0])
    _write_best(config, search, table, out_dir / "best.toml")
    return StageResult(
        STAGE,
        out_dir,
        skipped=False,
        seconds=time.time() - started,
        counts={"trials": search.trials, "trained": trained},
        summary={"table": table, "best_trial": best_trial},
    )


def _trial(config: RunConfig, seed: int, trial: int, stage_sources: dict[str, Path]) -> tuple[dict, dict]:
    """Train and evaluate trial `trial`'s draw (skipped where finished) in its sub-run; (its `ranking` row,
    `subrun.train_and_evaluate`'s outcome)."""
    # NIL by thresholds, as the paper: a classifier fitted on the dev mentions it is scored on
    # would flatter the trials by how well it memorises them.
    dev_evaluation = dataclasses.replace(
        config.evaluate, eval_split="dev", tune_split="dev", languages=(), nil_method="threshold"
    )
    settings = draw_settings(seed, trial)
    folder = trial_dir(config.run_dir, seed, trial)
    sub_config = subrun.prepare(
        config, folder, stage_sources, train=dataclasses.replace(config.train, **settings), evaluate=dev_evaluation
    )
    outcome = subrun.train_and_evaluate(sub_config)
    score = subrun.micro_average(outcome["metrics"])
    logger.info(
        "trial %d: dev micro-average %.4f%s (%s)",
        trial,
        score,
        "" if outcome["trained"] else ", already trained",
        settings,
    )
    row = {
        "trial": trial,
        "dev_micro_average": score,
        **train_summary(sub_config.stage_dir("train")),
        **{k: _sizes(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "seconds": outcome["seconds"],
        "folder": str(folder.relative_to(config.run_dir)),
    }
    return row, outcome


def _write_best(config: RunConfig, search: SearchConfig, table: pl.DataFrame, path: Path) -> None:
    """best.toml: the run's config with the best trial's settings (`table`, best first), which `xel-cli run`
    reads back."""
    best_trial = int(table["trial"][0])
    best_config = dataclasses.replace(
        config,
        name=f"{config.name}-best",
        train=dataclasses.replace(config.train, **draw_settings(search.seed, best_trial)),
    )
    header = (
        f"Best of {search.trials} random-search trial(s) (seed {search.seed}) over Appendix A, on the dev split\n"
        f"of {config.run_dir}: trial {best_trial}, dev micro-average {table['dev_micro_average'][0]:.4f}.\n"
        f"`xel-cli run --config best.toml --run-dir {config.run_dir}` reuses that run's triage and\n"
        "encode and retrains its model with these settings; without --run-dir it starts a new run."
    )
    write_text_atomic(path, config_toml(best_config, header))


def train_summary(train_dir: Path) -> dict[str, Any]:
    """Best dev linking accuracy and epoch from a finished train stage's manifest."""
    manifest = read_manifest(train_dir) or {}
    return {
        "best_dev_accuracy": manifest.get("best_dev_accuracy"),
        "best_epoch": (manifest.get("counts") or {}).get("best_epoch"),
    }
