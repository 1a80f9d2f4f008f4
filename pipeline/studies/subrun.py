"""Sub-runs: many train + evaluate runs over one run's triage and encode outputs.

`xel-cli search` and `xel-cli experiment` train dozens of rankers that differ only in
[train] / [evaluate] settings. Each gets its own run folder (a sub-run) whose
`triage/` and `encode/` are relative symlinks to the parent run's stage folders, so
the expensive stages run once and every sub-run sees them exactly as an ordinary run
would: train and evaluate read `<sub-run>/triage` and `<sub-run>/encode`, their stage
keys hash those stages' manifests, and a sub-run's train and evaluate skip themselves
when they are up to date. That is what makes a killed search or experiment resume:
finished sub-runs cost one manifest read each.

A sub-run folder is an ordinary run folder: `xel-cli evaluate --config ... --run-dir
<sub-run>` works on it (its `config.json` records the effective settings).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from pipeline.core.config import RunConfig, to_dict
from pipeline.core.errors import CacheError
from pipeline.core.io import write_json_atomic
from pipeline.scoring.decisions import read_metrics
from pipeline.scoring.measures import MICRO_AVERAGE
from pipeline.stages import run_stage

logger = logging.getLogger(__name__)

SHARED_STAGES = ("triage", "encode")


def run_shared_stages(config: RunConfig) -> dict[str, Path]:
    """Triage and encode the parent run (each skipped when up to date); {stage: its folder},
    the `stage_sources` that `prepare` links every sub-run to."""
    for stage in SHARED_STAGES:  # in order: each brings the one before it up to date
        run_stage(stage, config, check_upstream=False)
    return {name: config.stage_dir(name) for name in SHARED_STAGES}


def link_stage(link: Path, target: Path) -> None:
    """Make `link` a relative symlink to the stage folder `target` (kept if it already is one).

    Relative, so a run folder moved or copied as a whole keeps working. A real folder at
    `link` is refused (E410): it would hold outputs of its own that the link would hide.
    """
    target = target.resolve()
    if link.is_symlink():
        if link.resolve() == target:
            return
        link.unlink()  # a link to another parent (e.g. a moved run): re-point it
    elif link.exists():
        raise CacheError("E410", path=link, detail=f"should be a link to {target}")
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link, target_is_directory=True)


def prepare(base: RunConfig, run_dir: Path, stage_sources: dict[str, Path], **sections) -> RunConfig:
    """The config of a sub-run in `run_dir`, its stage links made and its config.json written.

    stage_sources: stage name -> the folder its link points at (triage and encode of the
    parent run, usually; the experiment's oracle cells also link a trained model).
    sections: replacement section configs, e.g. train=TrainConfig(...); checked by the
    dataclasses as any config is.
    """
    config = dataclasses.replace(base, run_dir=run_dir, name=f"{base.name}-{run_dir.name}", **sections)
    for stage, source in stage_sources.items():
        link_stage(config.stage_dir(stage), source)
    write_json_atomic(run_dir / "config.json", to_dict(config))
    return config


def train_and_evaluate(config: RunConfig, train_too: bool = True) -> dict:
    """Run train (unless `train_too` is false: a linked model), rerank (with rerank.enabled: evaluate then reads
    the sub-run's own reader) and evaluate; the metrics and what was redone ("trained": the ranker or the
    reader was trained now)."""
    # In order, over the parent's triage and encode just brought up to date; an oracle cell (not `train_too`)
    # evaluates a model trained on other candidates on purpose: no upstream check (`run_stage`).
    trained = run_stage("train", config, check_upstream=False) if train_too else None
    reader = run_stage("rerank", config, check_upstream=False) if config.rerank.enabled else None
    evaluated = run_stage("evaluate", config, check_upstream=False)
    done = [result for result in (trained, reader, evaluated) if result is not None]
    return {
        "metrics": read_metrics(config.stage_dir("evaluate")),
        "trained": any(result is not None and not result.skipped for result in (trained, reader)),
        "evaluated": not evaluated.skipped,
        "seconds": sum(result.seconds for result in done),
    }


def micro_average(metrics: dict, language: str | None = None) -> float | None:
    """KBP2010 micro-average overall or of one language; None when that language was not scored."""
    group = metrics["overall"] if language is None else metrics["by_language"].get(language)
    return None if group is None else float(group[MICRO_AVERAGE]["micro_average"])
