"""The schema of a model folder's `model.json`, checked whole when the folder is loaded.

model.json is hand-editable JSON, so every value it holds is checked for its type, that it is
a finite number where a number is meant, and its range, before anything is linked: a threshold
written as `"0.5"` or `NaN` is one E702 naming its key path (`nil.thresholds.en`), not a
TypeError after encoding or a language whose every mention is silently NIL. pydantic validates
the file's text in strict JSON mode (no `"0.5"` read as a number, no `true` as 1); the encoder
and triage settings are the run config's own dataclasses, so their `__post_init__` checks hold
here too. A key this schema does not name is refused (E716, `unknown_key`), naming its key path and
the known key closest to it, as a config file's unknown key is (E201): xel reads no key it does not
know, so a misspelt `default_treshold` would otherwise leave the setting it meant unchanged, silently.
A later xel that writes keys this one cannot read raises `format_version` (E703).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.core.config import MAX_COUNT, MAX_INTEGER, EncoderConfig, TriageConfig
from pipeline.core.config_file import closest_key, integer_past
from pipeline.core.errors import ConfigError

# A NIL threshold: compared with the ranker's tanh score (or the baseline's cosine), both in [-1, 1].
Score = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(min_length=1)]


class _Section(BaseModel):
    # Unknown keys are refused before pydantic sees the file (`unknown_key`), with the closest known key.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class EncoderMeta(_Section):
    name: Name
    path: str | None = None
    identity: Name  # the encoder's weights and tokenizer, which link checks it loads
    settings: EncoderConfig


class InputsMeta(_Section):
    context_chars: Annotated[int, Field(ge=50, le=MAX_COUNT)]


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
    fitted_on: dict[Name, Count] | None = None  # how many tuning mentions of each class it was fitted on

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
    fitted_on: dict[Name, Count] | None = None  # how many training mentions, and NILs of them

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
    reader_cut: Score | None = None  # the reader's NIL margin chosen on dev (`nil.reader_cut`); absent: 0

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


Share = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class EvaluationMeta(_Section):
    """The run's score of the model: on which split, and its micro-average there."""

    split: str | None = None
    micro_average: Share | None = None


class TrainedOnMeta(_Section):
    """What the model was trained on: informative, but a number there is still a number."""

    languages: list[str] = []
    mentions: dict[str, dict[str, Count]] = {}
    train_mentions_by_language: dict[str, Count] = {}
    features: list[str] = []
    best_dev_accuracy: Share | None = None
    best_epoch: Count | None = None
    evaluation: EvaluationMeta | None = None


class ReaderLayoutMeta(_Section):
    max_seq_tokens: Annotated[int, Field(ge=1)]
    max_context_tokens: Annotated[int, Field(ge=1)]
    top_k: Annotated[int, Field(ge=1)]
    form: Literal["listwise", "pairwise"] = "listwise"


class ReaderMeta(_Section):
    """The rerank stage's reader the folder carries (`pipeline.model.reader`): its folder and reader.json
    (`rerank.stage.reader_meta`; what link reads is the layout, the candidates, the precision and cast_weights)."""

    folder: Name
    layout: ReaderLayoutMeta
    candidates: Literal["ranker", "triage"] = "ranker"
    triage_evidence: bool = False  # the reader reads each candidate's triage score and sources
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    cast_weights: bool = False  # scored with the encoder's weights cast to the precision (`reader.cast_encoder`)
    format_version: Annotated[int, Field(ge=1)] | None = None
    settings: dict[str, Any] | None = None  # the run's [rerank] settings, as a record
    encoder: str | None = None  # the transformer the reader was fine-tuned from
    epoch: Count | None = None
    dev_accuracy: float | None = None  # NaN without dev mentions


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


def unknown_key(meta: Any) -> tuple[str, str, list[str]] | None:
    """(key path, hint, the keys known there) of model.json's first key (`meta`, parsed) that `ModelJson`
    does not name; None when it names every one. The hint (E201's, `config_file.closest_key`) names the
    closest known key at that place (` (did you mean `nil.default_threshold`?)` for `nil.default_treshold`),
    else the closest key path anywhere (`nil_treshold` at the top level: `nil.thresholds`), else is "".
    Values of the wrong type are left to `check_model_json`."""
    found = next(_unknown_keys(meta, ModelJson, ()), None)
    if found is None:
        return None
    path, key, known = found
    near = closest_key(key, known)
    if near is not None:
        near = ".".join((*path, near))
    else:  # a key put at the wrong level, or with _ for the dot: compared as one word
        paths = {"_".join(known_path): ".".join(known_path) for known_path in _key_paths(ModelJson, ())}
        near = paths.get(closest_key("_".join((*path, key)), paths) or "")
    return ".".join((*path, key)), f" (did you mean `{near}`?)" if near else "", known


def _unknown_keys(
    value: Any, annotation: Any, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], str, list[str]]]:
    """(path, unknown key, the keys known there) of each key of `value` that its schema `annotation`
    (a section, a config dataclass, a dict, a list, optional or annotated) does not name, in file order."""
    shape = _unwrapped(annotation)
    fields = _fields(shape)
    if fields is not None and isinstance(value, dict):
        for key, item in value.items():
            if key not in fields:
                yield path, str(key), list(fields)
            else:
                yield from _unknown_keys(item, fields[key], (*path, str(key)))
    elif typing.get_origin(shape) is dict and isinstance(value, dict):
        for key, item in value.items():
            yield from _unknown_keys(item, typing.get_args(shape)[1], (*path, str(key)))
    elif typing.get_origin(shape) is list and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unknown_keys(item, typing.get_args(shape)[0], (*path, str(index)))


def _key_paths(annotation: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Every key path the schema names (through sections and config dataclasses, not free dict keys)."""
    for key, field_annotation in (_fields(_unwrapped(annotation)) or {}).items():
        yield (*path, key)
        yield from _key_paths(field_annotation, (*path, key))


def _unwrapped(annotation: Any) -> Any:
    """`X` of `Annotated[X, ...]` and of `X | None`."""
    if typing.get_origin(annotation) is Annotated:
        return _unwrapped(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _unwrapped(options[0]) if len(options) == 1 else annotation
    return annotation


def _fields(shape: Any) -> dict[str, Any] | None:
    """Key -> annotation of a section or a config dataclass; None for anything else."""
    if isinstance(shape, type) and issubclass(shape, BaseModel):
        return {name: field.annotation for name, field in shape.model_fields.items()}
    if isinstance(shape, type) and dataclasses.is_dataclass(shape):
        hints = typing.get_type_hints(shape)
        return {field.name: hints[field.name] for field in dataclasses.fields(shape)}
    return None


# The encoder and triage settings are the run config's dataclasses, whose every field has a default
# (a config file may leave any out). model.json is written whole, so a key missing there is a hand
# edit, and taking the default would change links silently: each must be present, but for those
# added after model folders first shipped, whose defaults are what folders made before them did.
_SETTINGS = {("encoder", "settings"): EncoderConfig, ("triage",): TriageConfig}
_ADDED_LATER = {("encoder", "settings"): {"store_float16"}, ("triage",): {"crossfit_folds"}}


def missing_setting(meta: Any) -> str | None:
    """The key path of the first encoder or triage setting that model.json (`meta`, parsed) leaves out
    (`triage.k`), or None; sections that are missing or not objects are left to `check_model_json`."""
    for path, config in _SETTINGS.items():
        section = meta
        for key in path:
            section = section.get(key) if isinstance(section, dict) else None
        if not isinstance(section, dict):
            continue
        for field in dataclasses.fields(config):
            if field.name not in section and field.name not in _ADDED_LATER[path]:
                return ".".join((*path, field.name))
    return None


def check_model_json(text: str) -> str | None:
    """None when model.json's `text` matches `ModelJson`; else what is wrong with its first bad
    value, as `key.path: what is wrong (got value)` for E702."""
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None  # not JSON: pydantic's message says where
    missing = missing_setting(meta)
    if missing is not None:
        return (
            f"{missing}: Field required (model.json holds every setting it was made with; a default would change links)"
        )
    too_large = integer_past(meta, MAX_INTEGER)
    if too_large is not None:
        return f"{too_large[0] or 'model.json'}: must be at most {MAX_INTEGER} (got {too_large[1]})"
    try:
        ModelJson.model_validate_json(text, strict=True)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "model.json"
        message = first["msg"].removeprefix("Value error, ")
        got = "" if first["type"] in ("missing", "value_error") else f" (got {_short(first['input'])})"
        return f"{where}: {message}{got}"
    except ConfigError as error:  # an encoder or triage setting's own check
        return setting_problem(error)
    return None


def setting_problem(error: ConfigError) -> str:
    """An encoder or triage setting's own E203 (`[encoder]: name_layer = 99 is invalid: ...`), raised
    while model.json's settings are checked or used, as `key.path: what is wrong (got value)` for E702
    (`encoder.settings.name_layer: ...`); the message unchanged when it is not such an E203."""
    match = _E203.search(error.message)
    if match is None:
        return error.message
    section, key, value, reason = match.groups()
    return f"{_SECTION_PATHS.get(section, section)}.{key}: {reason} (got {value})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
