"""How a trained linker decides NIL: one place to save, load and apply it.

Today the policy is evaluate's: a threshold per language (tuned on dev or fixed), the
fallback `default_threshold` for a language the model never saw, and NIL clustering by
name or one cluster per mention. Both `xel-cli link` and `Linker.link` decide through
`NilPolicy.decide` and cluster through `NilPolicy.cluster`, and the policy is read from
and written to `model.json`'s "nil" object only here, so a further NIL artifact (e.g. a
learned NIL model next to the thresholds) is added in this module alone: save its file
in `save`, read it in `load`, apply it in `decide`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.errors import warn
from pipeline.nil import cluster_nils, decide

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NilPolicy:
    """Per-language NIL thresholds, the fallback for unseen languages, and the NIL clustering mode."""

    thresholds: dict[str, float]
    fallback: float
    clustering: str = "name"

    def save(self, folder: Path) -> list[str]:
        """Write the policy's own files into a model folder being built; returns their names.

        None yet: thresholds, fallback and clustering live in model.json (`to_json`). A
        learned NIL model would write its file here, and model_folder lists the names
        with their fingerprints, so a damaged one is caught like any other file.
        """
        return []

    def to_json(self) -> dict:
        return {"thresholds": dict(sorted(self.thresholds.items())), "fallback": self.fallback,
                "clustering": self.clustering}

    @classmethod
    def from_json(cls, payload: dict, model_dir: Path) -> "NilPolicy":
        """The policy saved in model.json's "nil" object, and its files in `model_dir` (see `save`).

        Raises KeyError/TypeError/ValueError when malformed (the caller's E702).
        """
        thresholds = {str(lang): float(value) for lang, value in payload["thresholds"].items()}
        clustering = str(payload["clustering"])
        if clustering not in ("name", "singleton"):
            raise ValueError(f"unknown NIL clustering {clustering!r}")
        return cls(thresholds, float(payload["fallback"]), clustering)

    def decide(self, predictions: pl.DataFrame) -> pl.DataFrame:
        """`nil.decide` with these thresholds: adds threshold, is_nil and kb_id (best KB id or NIL).

        predictions needs lang, best_kb_id (null without candidates) and best_score.
        """
        return decide(predictions, self.thresholds, self.fallback)

    def cluster(self, decided: pl.DataFrame) -> pl.DataFrame:
        """`nil.cluster_nils`: adds system_id, the KB id or the NIL cluster id (NIL00001, ...)."""
        return cluster_nils(decided, self.clustering)

    def warn_unseen(self, decided: pl.DataFrame) -> list[str]:
        """Warn once (W701) about languages without a threshold of their own; returns them, sorted."""
        unseen = decided.filter(~pl.col("lang").is_in(list(self.thresholds)))
        languages = sorted(unseen["lang"].unique().to_list())
        if languages:
            warn(logger, "W701", count=unseen.height, languages=", ".join(languages), threshold=self.fallback)
        return languages
