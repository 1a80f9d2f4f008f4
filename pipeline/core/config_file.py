"""Reading a run's config: one TOML file, `--set section.key=value` overrides on top.

Each value is checked against its field's type in the frozen dataclasses of `pipeline.core.config`
as TOML wrote it (pydantic's strict mode: no `"yes"` or `1` for a boolean, no `2.5` or `"3"` for an
integer; an integer is a number, a TOML array a list), then by the dataclass's own `__post_init__`.
Paths in the file are relative to the file's own folder, and so is the default run folder,
so a config works from any directory. Unknown sections or keys are errors, never ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import re
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import tomllib
from pydantic import TypeAdapter, ValidationError

from pipeline.core.config import (
    MAX_INTEGER,
    EncoderConfig,
    EvaluateConfig,
    InputsConfig,
    RerankConfig,
    RunConfig,
    TrainConfig,
    TriageConfig,
)
from pipeline.core.errors import ConfigError, TomlText, toml_spelling

SECTIONS: dict[str, type] = {
    "inputs": InputsConfig,
    "encoder": EncoderConfig,
    "triage": TriageConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "rerank": RerankConfig,
}
TOP_LEVEL_KEYS = ("name", "run_dir")


@functools.cache
def _path_fields(section_type: type) -> frozenset[str]:
    """Names of the fields typed `Path` or `Path | None` (from the resolved type hints)."""
    hints = typing.get_type_hints(section_type)
    return frozenset(name for name, hint in hints.items() if Path in (hint, *typing.get_args(hint)))


def _resolve_paths(section_type: type, values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Path fields given as strings, made absolute against `base`; "" means not set."""
    resolved = dict(values)
    for key in _path_fields(section_type) & values.keys():
        if isinstance(values[key], str):
            path = Path(values[key]).expanduser()
            resolved[key] = None if not values[key] else path if path.is_absolute() else (base / path).resolve()
    return resolved


# How a TOML file writes a value of each setting type, for E203's "must be ..." (`expected_type`).
_TYPE_WORDS = {
    bool: ("true or false (a TOML boolean: no quotes, not yes/no or 1/0)", "booleans"),
    int: ("a whole number (a TOML integer such as 3, without quotes)", "whole numbers"),
    float: ("a number (such as 0.5 or 1, without quotes)", "numbers"),
    str: ('a string (in quotes in a TOML file, e.g. "cpu")', "strings"),
    Path: ('a path (a string in quotes, e.g. "data/kb.jsonl")', "paths"),
}


def expected_type(hint: Any) -> str:
    """What a setting of type `hint` must be, in TOML's words: "true or false (...)", "a list of whole
    numbers, e.g. [512, 256]", "a table of numbers, e.g. {en = -0.8}"."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        example = '["en", "es"]' if arguments[0] is str else "[512, 256]"
        return f"a list of {_TYPE_WORDS[arguments[0]][1]}, e.g. {example}"
    if origin is dict:
        return f"a table of {_TYPE_WORDS[arguments[1]][1]}, e.g. {{en = -0.8}}"
    if arguments:  # Path | None: unset is leaving the key out
        return expected_type(next(argument for argument in arguments if argument is not type(None)))
    return _TYPE_WORDS[hint][0]


def toml_kind(value: Any) -> str:
    """The TOML type of a value as read ("a string", "an integer", "a boolean", "a list", ...)."""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"))
    kinds += (((list, tuple), "a list"), (dict, "a table"), (Path, "a path"))
    return next((text for kind, text in kinds if isinstance(value, kind)), f"a {type(value).__name__}")


@functools.cache
def _field_adapter(hint: Any) -> TypeAdapter:
    """pydantic's validator of one setting type (built once per type)."""
    return TypeAdapter(hint)


def integer_past(value: Any, limit: int, path: tuple[str, ...] = ()) -> tuple[str, int] | None:
    """(key path below `path`, value) of the first integer in `value` (a setting or a parsed JSON file:
    numbers, lists, tuples and tables of them) whose size is past `limit`, or None. No array, tensor
    or tokenizer xel hands an integer to holds one past int64; model.json's check uses it too."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (".".join(path), value) if abs(value) > limit else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = integer_past(item, limit, (*path, str(key)))
        if found is not None:
            return found
    return None


def _strict_value(hint: Any, key: str, value: Any, where: str) -> Any:
    """`value` of setting `key` (of type `hint`) checked as TOML wrote it: pydantic's strict mode, so a
    boolean is true or false and never "yes" or 1, an integer is never 2.5, "3" or true, a string never
    a number; an integer is a number (for a float setting) and a TOML array a list (tuple settings).
    E203 (at `where`, a section) saying which type is expected and which was given."""
    checked = tuple(value) if typing.get_origin(hint) is tuple and isinstance(value, list) else value
    too_large = integer_past(checked, MAX_INTEGER)
    if too_large is not None:  # it would fail in numpy, torch or a tokenizer, after work was done
        reason = f"must be at most {MAX_INTEGER} (got {too_large[1]})"
        raise ConfigError("E203", where=where, field=key, value=value, reason=reason)
    try:
        return _field_adapter(hint).validate_python(checked, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = f"must be {expected_type(hint)}, not {toml_kind(value)}"
        if first["loc"]:  # an item of a list or a table
            part = first["loc"][0]
            label = f"item {part + 1}" if isinstance(part, int) else f"{part!r}"
            reason = f"must be {expected_type(hint)}; its {label} is {toml_kind(first['input'])}"
        raise ConfigError("E203", where=where, field=key, value=value, reason=reason) from None


def _build_section(section_type: type, values: dict[str, Any], where: str) -> Any:
    """One section's dataclass from its `values`, each checked for its type as written (`_strict_value`:
    E203) before the dataclass's own `__post_init__` checks its range (E203 too)."""
    hints = typing.get_type_hints(section_type)
    checked = {key: _strict_value(hints[key], key, value, where) for key, value in values.items()}
    return section_type(**checked)


def _override_value(section_type: type, key: str, text: str, where: str) -> Any:
    """A --set value for field `key`: strings and paths as given, or as a TOML string ("cpu"); a list as TOML (`[512, 256]`),
    TOML strings without the brackets (`"en"`, `"en","es"`) or comma-separated (`name,context`;
    an empty entry stays, for the section's checks to refuse; "" is the empty list); anything
    else as a TOML value (3, 1e-4, true, {en = -0.8}) when it reads as one, else the plain string
    for the type check to refuse (`yes` is not a boolean); a list of numbers' items each as TOML (512,256)."""
    hint = typing.get_type_hints(section_type)[key]
    if hint is str or Path in (hint, *typing.get_args(hint)):
        if len(text) >= 2 and text[0] == text[-1] and text[0] in ('"', "'"):  # "threshold" as TOML writes it
            try:
                return tomllib.loads(f"value = {text}")["value"]
            except tomllib.TOMLDecodeError:
                pass
        return text
    if typing.get_origin(hint) is tuple and not text.startswith("["):
        if text[:1] in ('"', "'"):  # quotes are TOML's, not the value's: "en" is ["en"]
            try:
                return tomllib.loads(f"value = [{text}]")["value"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(
                    "E203", where=where, field=key, value=text, reason='a list is written ["en", "es"] (TOML) or en,es'
                ) from None
        items = [item.strip() for item in text.split(",")] if text else []
        return items if typing.get_args(hint)[0] is str else [_toml_or_text(item) for item in items]
    return _toml_or_text(text)


def _toml_or_text(text: str) -> Any:
    """`text` read as a TOML value (3, 1e-4, true, {en = -0.8}) when it is one, else the text itself (for
    the type check to refuse where the setting is not a string: `yes` for a boolean)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def closest_key(key: str, known: Iterable[str]) -> str | None:
    """The known key closest to the unknown `key` (difflib, similarity at least 0.6), or None."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """' (did you mean `epochs`?)' naming `closest_key`, or "" when none is close: the hint of E201 and
    of model.json's E716."""
    close = closest_key(key, known)
    return f" (did you mean `{close}`?)" if close else ""


def unknown_key(path: str, key: str, section: str, known: list[str] | tuple[str, ...]) -> ConfigError:
    """E201 for `key`, naming the closest known key when one is close ("did you mean `epochs`?")."""
    return ConfigError(
        "E201", path=path, key=key, section=section, known=", ".join(known), hint=did_you_mean(key, known)
    )


def parse_override(text: str) -> tuple[str, str, str]:
    """`section.key=value` from the command line."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(
            "E203",
            where="--set",
            field="override",
            value=text,
            reason="write it as section.key=value, e.g. train.epochs=50",
        )
    dotted, value = text.split("=", 1)
    section, key = dotted.split(".", 1)
    return section.strip(), key.strip(), value.strip()


def _split_document(raw: dict[str, Any], where_file: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(sections by name, top-level keys) of a parsed TOML document; E203 for a section that is a value,
    E204 for an unknown section, E201 for an unknown top-level key."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError("E203", where=where_file, field=key, value=value, reason="must be a [section]")
            sections[key] = dict(value)
        elif key in TOP_LEVEL_KEYS:
            top[key] = value
        elif isinstance(value, dict):
            raise ConfigError("E204", path=where_file, section=key, known=", ".join(SECTIONS))
        else:
            raise unknown_key(where_file, key, "top level", TOP_LEVEL_KEYS + tuple(SECTIONS))
    return sections, top


def build_config(
    raw: dict[str, Any], *, source: Path | None, base: Path, overrides: tuple[str, ...] = (), root: Path | None = None
) -> RunConfig:
    """Check every key of a parsed TOML document, apply overrides, build the dataclasses."""
    where_file = str(source) if source else "config"
    sections, top = _split_document(raw, where_file)
    cwd = Path.cwd()
    override_values: dict[tuple[str, str], str] = {}
    run_dir_base = base  # a relative run_dir: against the file's folder, or the working folder for --set
    for text in overrides:
        section, key, value = parse_override(text)
        if section == "run" and key in TOP_LEVEL_KEYS:
            top[key] = value
            run_dir_base = cwd if key == "run_dir" else run_dir_base
            continue
        if section not in SECTIONS:
            raise ConfigError("E204", path="--set", section=section, known=", ".join(SECTIONS))
        override_values[(section, key)] = value
    built: dict[str, Any] = {}
    for section, section_type in SECTIONS.items():
        known = [f.name for f in dataclasses.fields(section_type)]
        values: dict[str, Any] = {}
        for key, value in sections.get(section, {}).items():
            if key not in known:
                raise unknown_key(where_file, key, section, known)
            values[key] = value
        values = _resolve_paths(section_type, values, base)
        overridden: dict[str, Any] = {}
        for (o_section, key), value in override_values.items():
            if o_section != section:
                continue
            if key not in known:
                raise unknown_key("--set", key, section, known)
            overridden[key] = _override_value(section_type, key, value, f"--set [{section}]")
        # File paths resolve against the file's folder, --set paths against the working folder.
        values.update(_resolve_paths(section_type, overridden, cwd))
        # The checks know the section, not where the value came from: `located` adds that.
        with settings_located(source, tuple(f"{s}.{k}" for s, k in override_values)):
            built[section] = _build_section(section_type, values, f"[{section}]")
    name = str(top.get("name") or (source.stem if source else "run"))
    if "run_dir" in top:
        run_dir = Path(str(top["run_dir"])).expanduser()
        run_dir = run_dir if run_dir.is_absolute() else (run_dir_base / run_dir).resolve()
    else:
        # Beside the config file, as its input paths are: the working folder does not matter.
        run_dir = (root or base / "artifacts").resolve() / name
    overrides = tuple(f"{section}.{key}" for section, key in override_values)
    with settings_located(source, overrides):  # RunConfig's checks across sections
        return RunConfig(name=name, run_dir=run_dir, source=source, overrides=overrides, **built)


# A check's own `where` for a setting of a section ("[rerank]"): `located` says which file and line.
_SECTION_WHERE = re.compile(r"\[(\w+)\]")


def setting_line(path: Path, section: str, key: str) -> int | None:
    """The line (from 1) of TOML file `path` that sets `key` of `[section]`: `key = ...` under the
    `[section]` header, `section.key = ...` before any header, or the `section = {...}` inline table
    that holds it; None where the file does not set it (or cannot be read)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    current = ""
    for number, line in enumerate(lines, start=1):
        header = re.match(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).strip("\"'")
            continue
        assigned = re.match(r"\s*([A-Za-z0-9_.\"'-]+?)\s*=", line)
        if assigned is None:
            continue
        name = assigned.group(1).replace('"', "").replace("'", "")
        if (current == section and name == key) or (not current and name == f"{section}.{key}"):
            return number
        if not current and name == section and re.search(rf"[{{,]\s*{re.escape(key)}\s*=", line):
            return number
    return None


def located(error: ConfigError, source: Path | None, overrides: tuple[str, ...] = ()) -> ConfigError:
    """`error` again, naming where its setting came from when its check named only the section (an E203
    whose `where` is "[rerank]"): `--set [rerank]` for a --set value, `run.toml:12 [rerank]` for one the
    file sets on line 12, `run.toml [rerank]` with "(the default)" after the value for one left unset.
    Any other error is returned as it is."""
    where = str(error.fields.get("where", ""))
    section = _SECTION_WHERE.fullmatch(where)
    if error.code != "E203" or section is None:
        return error
    key = str(error.fields.get("field", ""))
    fields = dict(error.fields)
    if f"{section.group(1)}.{key}" in overrides:
        fields["where"] = f"--set {where}"
        return ConfigError("E203", **fields)
    if source is None:
        return error
    line = setting_line(source, section.group(1), key)
    fields["where"] = f"{source}:{line} {where}" if line is not None else f"{source} {where}"
    if line is None:
        fields["value"] = TomlText(f"{toml_spelling(fields['value'])} (the default)")
    return ConfigError("E203", **fields)


@contextlib.contextmanager
def settings_located(source: Path | None, overrides: tuple[str, ...] = ()) -> Iterator[None]:
    """Run the block; a setting's check it raises (E203 naming a section only) names its file and line
    (`located`). The config's own checks use it, and so do the commands around the stages, whose
    checks (rerank.enabled, a device this machine lacks, ...) see only the built config."""
    try:
        yield
    except ConfigError as error:
        better = located(error, source, overrides)
        if better is error:
            raise
        raise better from error


def load_config(path: Path, overrides: tuple[str, ...] = (), root: Path | None = None) -> RunConfig:
    """Read a TOML config file; unknown sections or keys are errors, never ignored."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError("E108", path=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("E202", path=path, detail=exc) from None
    return build_config(raw, source=path.resolve(), base=path.resolve().parent, overrides=overrides, root=root)
