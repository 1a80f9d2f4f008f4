"""The schema of a model folder's `model.json`, checked whole when the folder is loaded.

model.json is hand-editable JSON, so every value it holds is checked for its type, that it is
a finite number where a number is meant, and its range, before anything is linked: a threshold
written as `"0.5"` or `NaN` is one E702 naming its key path (`nil.thresholds.en`), not a
TypeError after encoding or a language whose every mention is silently NIL. pydantic validates
the file's text in strict JSON mode (no `"0.5"` read as a number, no `true` as 1); the encoder
and triage settings are the run config's own dataclasses, so their `__post_init__` checks hold
here too. Keys this schema does not name are kept as they are (a later xel of the same format
version may add some); every key it names is checked.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.core.config import EncoderConfig, TriageConfig
from pipeline.core.errors import ConfigError

# A NIL threshold: compared with the ranker's tanh score (or the baseline's cosine), both in [-1, 1].
Score = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(min_length=1)]


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class EncoderMeta(_Section):
    name: Name
    path: str | None = None
    identity: str | None = None
    settings: EncoderConfig


class InputsMeta(_Section):
    context_chars: Annotated[int, Field(ge=50)]


class ClassifierMeta(_Section):
    """`nil_classifier.fit`'s parameters: one mean and scale per feature, one coef row and intercept per class."""

    version: Annotated[int, Field(ge=1)] = 1
    features: list[Name]
    types: list[str]
    mean: list[Finite]
    scale: list[Positive]
    classes: list[Literal["nil", "right", "wrong"]]
    coef: list[list[Finite]]
    intercept: list[Finite]
    C: Positive | None = None

    @model_validator(mode="after")
    def _shapes(self) -> "ClassifierMeta":
        width = len(self.features)
        if len(self.mean) != width or len(self.scale) != width:
            raise ValueError(f"mean and scale need one value per feature ({width})")
        if len(self.coef) != len(self.classes) or len(self.intercept) != len(self.classes):
            raise ValueError(f"coef and intercept need one row per class ({len(self.classes)})")
        if any(len(row) != width for row in self.coef):
            raise ValueError(f"every coef row needs one weight per feature ({width})")
        if "nil" not in self.classes or "right" not in self.classes:
            raise ValueError("classes must hold nil and right")
        if [f"type={t}" for t in self.types] != [f for f in self.features if f.startswith("type=")]:
            raise ValueError("types must be the features named type=...")
        return self


class MentionPriorMeta(_Section):
    """`mention_prior.fit`'s parameters: weights over the name and context vectors, and an intercept."""

    version: Annotated[int, Field(ge=1)] = 1
    coef: Annotated[list[Finite], Field(min_length=2)]
    intercept: Finite
    C: Positive | None = None

    @model_validator(mode="after")
    def _even(self) -> "MentionPriorMeta":
        if len(self.coef) % 2:
            raise ValueError("coef needs one weight per name and context vector dimension (an even count)")
        return self


class TuningCount(_Section):
    mentions: Count
    nil: Count


class NilMeta(_Section):
    """The NIL policy (`nil_policy.NilPolicy.to_json`): evaluate's nil.json plus fallback and clustering."""

    method: Literal["threshold", "classifier", "nota", "reader"]
    thresholds: dict[Name, Score]
    default_threshold: Score
    fallback: Score | None = None
    clustering: Literal["name", "singleton"]
    classifier: ClassifierMeta | None = None
    mention_prior: MentionPriorMeta | None = None
    tuning_counts: dict[Name, TuningCount] | None = None
    tune_split: str | None = None

    @model_validator(mode="after")
    def _classifier(self) -> "NilMeta":
        if self.method == "classifier" and self.classifier is None:
            raise ValueError("the classifier method needs the classifier's parameters")
        return self


class TypesMeta(_Section):
    mention: list[Name]
    entity: list[Name]


class KbMeta(_Section):
    path: Name
    name: Name | None = None  # the KB file's name (models before issue 23 have none: link takes the path's)
    fingerprint: str | None = None
    entities: Count | None = None


class TrainedOnMeta(_Section):
    """What the model was trained on: informative, but a number there is still a number."""

    languages: list[str] = []
    mentions: dict[str, dict[str, Count]] = {}
    train_mentions_by_language: dict[str, Count] = {}
    features: list[str] = []
    best_dev_accuracy: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    best_epoch: Count | None = None


class ReaderLayoutMeta(_Section):
    max_seq_tokens: Annotated[int, Field(ge=1)]
    max_context_tokens: Annotated[int, Field(ge=1)]
    top_k: Annotated[int, Field(ge=1)]
    form: Literal["listwise", "pairwise"] = "listwise"


class ReaderMeta(_Section):
    """The rerank stage's reader the folder carries (`pipeline.model.reader`): its folder and reader.json."""

    folder: Name
    layout: ReaderLayoutMeta
    candidates: Literal["ranker", "triage"] = "ranker"
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class ModelJson(_Section):
    """model.json as `model_folder.write_model_folder` writes it."""

    format: Literal["xel-linker"]
    format_version: Annotated[int, Field(ge=1)]
    xel_version: str | None = None
    created: str | None = None
    run: str | None = None
    encoder: EncoderMeta
    triage: TriageConfig
    inputs: InputsMeta
    nil: NilMeta
    popularity_rerank: bool = False
    reader: ReaderMeta | None = None
    types: TypesMeta
    kb: KbMeta
    trained_on: TrainedOnMeta | None = None
    files: Annotated[dict[Name, Name], Field(min_length=1)]


# Where a config dataclass's own check (E203, "[encoder]: batch_tokens = 3 is invalid: ...") sits in model.json.
_SECTION_PATHS = {"encoder": "encoder.settings", "triage": "triage"}
_E203 = re.compile(r"\[E203\] \[(\w+)\]: (\w+) = (.*?) is invalid: (.*?); change it")


def check_model_json(text: str) -> str | None:
    """None when model.json's `text` matches `ModelJson`; else what is wrong with its first bad
    value, as `key.path: what is wrong (got value)` for E702."""
    try:
        ModelJson.model_validate_json(text, strict=True)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "model.json"
        message = first["msg"].removeprefix("Value error, ")
        got = "" if first["type"] in ("missing", "value_error") else f" (got {_short(first['input'])})"
        return f"{where}: {message}{got}"
    except ConfigError as error:  # an encoder or triage setting's own check
        match = _E203.search(error.message)
        if match is None:
            return error.message
        section, key, value, reason = match.groups()
        return f"{_SECTION_PATHS.get(section, section)}.{key}: {reason} (got {value})"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
