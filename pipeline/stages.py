"""The pipeline's stages in run order, by name: what `xel-cli run` and the studies call.

Stage packages never import each other, and neither do link nor the studies: whatever runs
several stages goes through `run_stage`, which imports a stage only when it is run (so a
command that needs one stage does not import torch for the others).

A stage reads its upstream stages' outputs as they are on disk, and its own key hashes their
manifest keys, so a stage run alone (`xel-cli evaluate`) after the config changed an upstream
setting would be up to date with, or made from, outputs the config no longer asks for. So
`run_stage` first checks each upstream stage the stage reads (`upstream_stages`) against what the
config asks now (`check_upstream`): its manifest key must be the key its `identity(config)` gives.
"""

from __future__ import annotations

import importlib

from pipeline.core.config import RunConfig
from pipeline.core.errors import CacheError
from pipeline.core.manifest import MANIFEST, StageResult, changes, read_manifest

# rerank (the reader, docs/reader.md) runs only with rerank.enabled = true: callers skip it otherwise.
STAGES = ("triage", "encode", "train", "rerank", "evaluate")
# Stages every rank runs under torchrun (data-parallel training); rank 0 alone runs the others.
TRAINING_STAGES = ("train", "rerank")
# The config section whose settings a stage's key holds (triage's are by section already).
SETTINGS_SECTION = {"encode": "encoder.", "train": "train.", "rerank": "rerank.", "evaluate": "evaluate."}


def run_stage(name: str, config: RunConfig, check_upstream: bool = True, **options) -> StageResult:
    """Run stage `name` (one of `STAGES`) on `config`; `options` go to its `run` (e.g. force=True).

    Refuses first (`check_upstream`) an upstream output the stage reads that is not what `config` asks;
    callers that have just brought the upstream stages up to date in order (`xel-cli run`, the studies'
    sub-runs, whose oracle cells read a model made on other candidates on purpose) pass False.
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")
    if check_upstream:
        stage = importlib.import_module(f"pipeline.{name}.stage")
        if hasattr(stage, "check_config"):  # a setting under which the stage cannot run at all: said first
            stage.check_config(config)
        check_upstream_outputs(name, config)
    return importlib.import_module(f"pipeline.{name}").run(config, **options)


def check_settings(config: RunConfig, stages: tuple[str, ...] = STAGES) -> None:
    """Each of `stages`' own check of settings under which it cannot run (its `check_config`: rerank's
    enabled flag and encoder, the encoder a stage loads), said before any of them runs: `xel-cli run`
    refuses a bad `rerank.encoder` at once, not after triage, encode and train."""
    for name in stages:
        stage = importlib.import_module(f"pipeline.{name}.stage")
        if hasattr(stage, "check_config"):
            stage.check_config(config)


def upstream_stages(name: str, config: RunConfig) -> tuple[str, ...]:
    """The stages whose outputs stage `name` reads under `config`, in run order: rerank reads encode and
    train only when the ranker picks its candidates, evaluate reads rerank only with the reader on."""
    ranker_picks = config.rerank.candidates == "ranker"
    reads = {
        "triage": (),
        "encode": ("triage",),
        "train": ("triage", "encode"),
        "rerank": ("triage", "encode", "train") if ranker_picks else ("triage",),
        "evaluate": ("triage", "encode", "train", "rerank") if config.rerank.enabled else ("triage", "encode", "train"),
    }
    return reads[name]


def check_upstream_outputs(name: str, config: RunConfig) -> None:
    """Refuse to run stage `name` on upstream outputs `config` no longer asks for.

    Each upstream stage it reads, in run order, must have finished (E401: run it) with the key its
    `identity(config)` gives now, every output in place: else E407 naming that stage, what differs
    (settings, or which of its own inputs changed since) and the command that brings it up to date.
    An upstream stage's key hashes its own upstream keys, so the first stale one is the one named.
    """
    for upstream in upstream_stages(name, config):
        out_dir = config.stage_dir(upstream)
        manifest = read_manifest(out_dir)
        if manifest is None:
            raise CacheError("E401", path=out_dir / MANIFEST, stage=upstream)
        expected = importlib.import_module(f"pipeline.{upstream}.stage").identity(config)
        if manifest["key"] != expected.key:
            differences = changes(manifest, expected.settings, expected.inputs, SETTINGS_SECTION.get(upstream, ""))
            said = "; ".join(differences) or "made by another version of xel"
            raise CacheError(
                "E407",
                path=out_dir / MANIFEST,
                stage=upstream,
                detail=f"`xel-cli {name}` reads {upstream}'s output, which was made for other settings or "
                f"inputs than the config asks now ({said})",
            )
        missing = [output for output in manifest.get("outputs", []) if not (out_dir / output).exists()]
        if missing:
            raise CacheError("E401", path=out_dir / missing[0], stage=upstream)
