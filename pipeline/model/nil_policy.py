"""How a trained linker decides NIL: one place to save, load and apply it.

The policy is evaluate's NIL decision (`nil.json`, see `pipeline.evaluate.nil_choice`): the
method (per-language thresholds, the learned classifier over the ranker's and triage's
evidence, or "nota": the ranker's own NIL option against its best candidate), the thresholds with the fallback `default_threshold` for a language
the model never saw, the classifier's parameters, and the NIL clustering mode. Both
`evaluate` (through `nil.decide_nil`) and `xel-cli link` / `Linker.link` (through
`NilPolicy.decide`) apply it with the same function, so a trained linker decides NIL
exactly as its run's evaluate did. It lives in model.json's "nil" object.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.core.errors import ConfigError, warn
from pipeline.core.languages import is_language_tag, normalise_language
from pipeline.model import mention_prior
from pipeline.model.nil import cluster_nils, decide_nil, thresholds_decide
from pipeline.model.nil_classifier import EVIDENCE, add_evidence, decision_reads_prior
from pipeline.model.nil_classifier import VERSION as CLASSIFIER_VERSION

logger = logging.getLogger(__name__)


def check_prior(prior: object) -> None:
    """ValueError unless `prior` is a mention NIL prior's parameters (`mention_prior.fit`): a non-empty,
    even-length list of numbers `coef` and a number `intercept`."""
    if not isinstance(prior, dict):
        raise ValueError("the classifier reads the mention NIL prior, which the model does not hold")
    if not isinstance(prior.get("version", 1), int) or prior.get("version", 1) > mention_prior.VERSION:
        raise ValueError(
            f"its mention NIL prior is of format {prior.get('version')!r}, newer than this xel's "
            f"{mention_prior.VERSION}: update xel"
        )
    coef, intercept = prior.get("coef"), prior.get("intercept")
    numbers = isinstance(coef, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in coef)
    if not (
        numbers
        and coef
        and len(coef) % 2 == 0
        and isinstance(intercept, (int, float))
        and not isinstance(intercept, bool)
        and all(map(math.isfinite, [*coef, intercept]))
    ):
        raise ValueError("the mention NIL prior needs coef, an even-length list of numbers, and a number intercept")


@dataclass(frozen=True)
class NilPolicy:
    """evaluate's NIL decision (`artifact`, as in nil.json) and the NIL clustering mode."""

    artifact: dict
    clustering: str = "name"
    # The NIL threshold of a language the model has none for (`xel-cli link --fallback-threshold`);
    # None: model.json's `nil.fallback`, else the median of the model's per-language thresholds (`fallback`).
    unseen_threshold: float | None = None
    # model.json's `nil.fallback` (written as that median; a hand edit of it is the model's); None: not saved.
    saved_fallback: float | None = None

    @property
    def thresholds(self) -> dict[str, float]:
        return {str(lang): float(value) for lang, value in self.artifact["thresholds"].items()}

    @property
    def fallback(self) -> float:
        """The threshold of a language without one of its own: `unseen_threshold` when set, else
        model.json's `nil.fallback` (`saved_fallback`), else the median of the per-language thresholds
        (evaluate's `default_threshold`, -1 by the paper, is below every tanh score and would make an
        unseen language never NIL), else `default_threshold` when the model has none."""
        if self.unseen_threshold is not None:
            return float(self.unseen_threshold)
        if self.saved_fallback is not None:
            return float(self.saved_fallback)
        median = self._median()
        return float(self.artifact["default_threshold"]) if median is None else median

    def _median(self) -> float | None:
        """The median of the per-language thresholds; None when the model has none."""
        values = sorted(self.thresholds.values())
        if not values:
            return None
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    def fallback_source(self) -> str:
        """Where `fallback` comes from, in W701's words."""
        median = self._median()
        if self.unseen_threshold is not None:
            return "--fallback-threshold"
        if self.saved_fallback is not None and (median is None or self.saved_fallback != median):
            return "model.json's nil.fallback"
        if median is not None:
            return "the median of the model's per-language thresholds"
        return "the model's default threshold nil.default_threshold, as it has no per-language threshold"

    def with_unseen_threshold(self, value: float) -> "NilPolicy":
        """This policy with `unseen_threshold` = `value` (`--fallback-threshold`); E203 unless a
        number in [-1, 1], the ranker's tanh range (1 makes every unseen-language mention NIL)."""
        try:
            number = math.nan if isinstance(value, bool) else float(value)  # True is no threshold
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and -1.0 <= number <= 1.0):
            raise ConfigError(
                "E203",
                where="--fallback-threshold",
                field="fallback_threshold",
                value=value,
                reason="must be a number in [-1, 1], the ranker's score range",
            )
        return dataclasses.replace(self, unseen_threshold=number)

    @classmethod
    def from_artifact(cls, artifact: dict, clustering: str) -> "NilPolicy":
        """The policy of evaluate's `nil.json` content; raises KeyError/TypeError/ValueError when malformed."""
        method = str(artifact["method"])
        if method not in ("threshold", "classifier", "nota", "reader"):
            raise ValueError(f"unknown NIL method {method!r}")
        if method == "classifier" and not isinstance(artifact.get("classifier"), dict):
            raise ValueError("the classifier method needs the classifier's parameters")
        version = artifact["classifier"].get("version", 1) if method == "classifier" else 1
        if not isinstance(version, int) or version > CLASSIFIER_VERSION:
            raise ValueError(
                f"its NIL classifier is of format {version!r}, newer than this xel's {CLASSIFIER_VERSION}: update xel"
            )
        if decision_reads_prior(artifact):
            check_prior(artifact.get("mention_prior"))
        if clustering not in ("name", "singleton"):
            raise ValueError(f"unknown NIL clustering {clustering!r}")
        # Inputs read `en-US` as `en` (`pipeline.core.languages`); a model saved before that may key a
        # threshold by the whole tag, which would then match no mention: key it the same way.
        thresholds = {
            normalise_language(lang) if is_language_tag(lang) else lang: value
            for lang, value in sorted(artifact["thresholds"].items(), reverse=True)
        }
        policy = cls({**artifact, "thresholds": dict(sorted(thresholds.items()))}, clustering)
        _ = policy.thresholds, policy.fallback  # both must parse as numbers
        return policy

    def to_json(self) -> dict:
        """model.json's "nil" object: the artifact, plus the fallback threshold and the clustering mode."""
        return {**self.artifact, "fallback": self.fallback, "clustering": self.clustering}

    @classmethod
    def from_json(cls, payload: dict) -> "NilPolicy":
        """The policy saved in model.json's "nil" object, its `fallback` too (a hand edit there is the
        model's, as one of a threshold is); the caller turns errors into E702."""
        artifact = {key: value for key, value in payload.items() if key not in ("clustering", "fallback")}
        policy = cls.from_artifact(artifact, str(payload["clustering"]))
        fallback = payload.get("fallback")
        return policy if fallback is None else dataclasses.replace(policy, saved_fallback=float(fallback))

    def with_mention_prior(self, mentions: pl.DataFrame, name: np.ndarray, context: np.ndarray) -> pl.DataFrame:
        """mentions with the `mention_nil_logit` column the classifier reads, when evaluate fitted a
        mention NIL prior (`pipeline.model.mention_prior`); unchanged otherwise. name, context:
        (len(mentions), H) vectors in the mentions' row order, as the ranker reads them."""
        if not self.reads_prior:
            return mentions
        return mentions.with_columns(
            pl.Series(mention_prior.COLUMN, mention_prior.logits(self.artifact["mention_prior"], name, context))
        )

    @property
    def reads_prior(self) -> bool:
        """Whether the decision reads the mention NIL prior (the classifier decides and has it as a feature)."""
        return decision_reads_prior(self.artifact)

    def decide(self, predictions: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
        """`nil.decide_nil` with this policy: adds threshold, is_nil and kb_id (best KB id or NIL).

        predictions needs mention_id, mention, lang, best_kb_id (null without candidates),
        best_score, second_score (and entity_type when the classifier uses types; nil_score,
        the ranker's NIL option, for nota and for a classifier fitted with it);
        candidates is triage's table (mention_id, rank, kb_id, score, sources), the
        classifier's evidence. The evidence columns are dropped again (link's `candidates`
        column is the candidate list, not the classifier's count), so the result has the
        same columns whichever method decides.
        """
        # Every language of the run has a threshold of its own; the fallback is for the others.
        artifact = {**self.artifact, "default_threshold": self.fallback}
        if artifact["method"] != "classifier":
            return decide_nil(predictions, artifact).drop(mention_prior.COLUMN, strict=False)
        decided = decide_nil(add_evidence(predictions, candidates), artifact)
        return decided.drop(*EVIDENCE, mention_prior.COLUMN, strict=False)

    def cluster(self, decided: pl.DataFrame) -> pl.DataFrame:
        """`nil.cluster_nils`: adds system_id, the KB id or the NIL cluster id (NIL00001, ...)."""
        return cluster_nils(decided, self.clustering)

    def warn_unseen(self, decided: pl.DataFrame) -> list[str]:
        """Warn once (W701) about languages without a threshold of their own; returns them, sorted."""
        unseen = decided.filter(~pl.col("lang").is_in(list(self.thresholds)))
        languages = sorted(unseen["lang"].unique().to_list())
        if languages and not thresholds_decide(self.artifact):
            return languages  # the classifier, nota or the reader decides NIL: no threshold is used, none to warn of
        if languages:
            source = self.fallback_source()
            warn(
                logger,
                "W701",
                count=unseen.height,
                languages=", ".join(languages),
                threshold=round(self.fallback, 4),
                source=source,
            )
        return languages
