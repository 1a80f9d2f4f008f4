"""Stage 3 (paper §3.2-3.3): the neural ranker trained with the hinge loss, single process or DDP."""

from pipeline.train.stage import run

__all__ = ["run"]
