"""Stage 4 (paper §4): scores, NIL decisions, TAC output and measures."""

from pipeline.evaluate.stage import run

__all__ = ["run"]
