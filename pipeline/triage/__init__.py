"""Stage 1: candidates per mention from priors, KB names, fuzzy and dense name matching."""

from pipeline.triage.stage import run

__all__ = ["run"]
