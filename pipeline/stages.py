"""The pipeline's stages in run order, by name: what `xel-cli run` and the studies call.

Stage packages never import each other, and neither do link nor the studies: whatever runs
several stages goes through `run_stage`, which imports a stage only when it is run (so a
command that needs one stage does not import torch for the others).
"""

from __future__ import annotations

import importlib

from pipeline.core.config import RunConfig
from pipeline.core.manifest import StageResult

STAGES = ("triage", "encode", "train", "evaluate")


def run_stage(name: str, config: RunConfig, **options) -> StageResult:
    """Run stage `name` (one of `STAGES`) on `config`; `options` go to its `run` (e.g. force=True)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")
    return importlib.import_module(f"pipeline.{name}").run(config, **options)
