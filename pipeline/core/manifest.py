"""Stage bookkeeping: fingerprints, manifests, skip-when-up-to-date.

A stage's key hashes its version, the settings that change its output and its inputs'
fingerprints (for upstream stages, their manifest keys). The manifest is written last,
after every output file is in place, so a manifest's presence means a finished stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.core.errors import CacheError
from pipeline.core.io import remove_leftover_temps, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StageResult:
    """What a stage did: where it wrote, whether it skipped, counts and a summary for the CLI."""

    stage: str
    out_dir: Path
    skipped: bool
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageIdentity:
    """What a stage's key hashes for a config (each stage's `identity(config)`): its version, the settings
    that change its output and its inputs (upstream stages' manifest keys, file fingerprints). A finished
    stage whose manifest key is not `key` was made for other settings or inputs than the config asks."""

    stage: str
    version: int
    settings: dict[str, Any]
    inputs: dict[str, str]

    @property
    def key(self) -> str:
        return stage_key(self.stage, self.version, self.settings, self.inputs)


class StageRun:
    """The skeleton every stage runs, written once: its key; skip when up to date; else
    invalidate (manifest first), do the work, write the manifest last.

        run = StageRun(out_dir, STAGE, STAGE_VERSION, settings, inputs, force)
        if run.up_to_date:
            return run.skipped()
        run.begin(work_dir)        # old manifest and temporary files gone, out_dir made
        ...                        # write every output (atomic writers)
        return run.finish(counts, outputs, summary=..., extra=...)

    `key` hashes the stage, its version, `settings` and `inputs` (upstream keys or file
    fingerprints); `started` is when the run began (the manifest's start time).
    """

    def __init__(
        self,
        out_dir: Path,
        stage: str,
        version: int,
        settings: dict[str, Any],
        inputs: dict[str, str],
        force: bool = False,
    ) -> None:
        self.started = time.time()
        self.out_dir, self.stage, self.settings, self.inputs = out_dir, stage, settings, inputs
        self.key = stage_key(stage, version, settings, inputs)
        self.up_to_date = not force and is_up_to_date(out_dir, self.key)

    def skipped(self) -> StageResult:
        """The result of a stage that was up to date: nothing done."""
        return StageResult(self.stage, self.out_dir, skipped=True, seconds=time.time() - self.started)

    def begin(self, *work_dirs: Path) -> None:
        """Invalidate the old outputs (saying what is replaced) and make the stage folder."""
        invalidate(self.out_dir, *work_dirs, settings=self.settings, inputs=self.inputs)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def finish(
        self,
        counts: dict[str, int],
        outputs: list[str],
        summary: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StageResult:
        """Write the manifest last, once every output in `outputs` (names in out_dir) is in place."""
        head = ManifestHead(self.stage, self.key, self.inputs, self.settings, self.started)
        write_manifest(self.out_dir, head, counts, outputs, extra)
        return StageResult(
            self.stage,
            self.out_dir,
            skipped=False,
            seconds=time.time() - self.started,
            counts=counts,
            summary=summary or {},
        )


def stage_key(stage: str, version: int, settings: dict[str, Any], inputs: dict[str, str]) -> str:
    """Hash of everything that determines a stage's output."""
    payload = json.dumps(
        {"stage": stage, "version": version, "settings": settings, "inputs": inputs}, sort_keys=True, default=str
    )
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The stage manifest in `out_dir`, or None when there is none (E402 when damaged)."""
    path = out_dir / MANIFEST
    return read_manifest_file(path) if path.exists() else None


def read_manifest_file(path: Path) -> dict[str, Any]:
    """A manifest file (a stage's, or an encode shard's), checked: E402 when damaged."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError("E402", path=path, detail=f"manifest is damaged ({exc})") from None
    # Valid JSON of the wrong shape (a list, no key, outputs not a list) is just as damaged.
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("key"), str)
        or not isinstance(manifest.get("outputs", []), list)
    ):
        raise CacheError(
            "E402", path=path, detail="manifest is damaged (not an object with a 'key' string and an 'outputs' list)"
        )
    return manifest


def upstream_key(out_dir: Path, stage: str) -> str:
    """The key of a finished upstream stage; a missing manifest means it has not run."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise CacheError("E401", path=out_dir / MANIFEST, stage=stage)
    return str(manifest["key"])


def is_up_to_date(out_dir: Path, key: str) -> bool:
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("key") != key:
        return False
    return all((out_dir / name).exists() for name in manifest.get("outputs", []))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "xel": __version__}
    for package in ("torch", "transformers", "polars", "pyarrow", "h5py", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def invalidate(
    out_dir: Path, *work_dirs: Path, settings: dict[str, Any] | None = None, inputs: dict[str, str] | None = None
) -> None:
    """Remove a stage's manifest first, so a crash mid-way never leaves it looking finished.

    When a finished stage is about to be redone, says so with what changed: the
    settings and inputs given here are compared with the old manifest's. Also deletes
    temporary files a killed run left in `out_dir` and in `work_dirs` (its subfolders that
    are written with `atomic_path`): the caller holds the run lock.
    """
    try:
        previous = read_manifest(out_dir)
    except CacheError:
        previous = None  # a damaged manifest is replaced without a word: E402 was its report
    if previous is not None:
        _say_replaced(out_dir, previous, settings, inputs)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for folder in (out_dir, *work_dirs):
        remove_leftover_temps(folder)


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _shown(values: dict[str, Any], key: str) -> str:
    """A setting's value as a config file writes it (true, not Python's True), or "(default)" when absent."""
    if key not in values:
        return "(default)"
    value = values[key]
    return value if isinstance(value, str) and value else json.dumps(value, ensure_ascii=False)


def changes(
    previous: dict[str, Any], settings: dict[str, Any] | None, inputs: dict[str, str] | None, prefix: str = ""
) -> list[str]:
    """What differs between a finished stage's manifest (`previous`) and the `settings` and `inputs` a
    config gives it now: "margin: 1.0 -> 0.5" per setting (`prefix` before each key, e.g. "train."), and
    "kb changed" per input (an upstream stage's output, a file, the encoder)."""
    reasons = []
    if settings is not None:
        old, new = (
            _flatten(json.loads(json.dumps(previous.get("settings", {}), default=str))),
            _flatten(json.loads(json.dumps(settings, default=str))),
        )
        reasons += [
            f"{prefix}{key}: {_shown(old, key)} -> {_shown(new, key)}"
            for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)
        ]
    if inputs is not None:
        old_inputs = previous.get("inputs", {})
        reasons += [
            f"{name} changed"
            for name in sorted(old_inputs.keys() | inputs.keys())
            if old_inputs.get(name) != inputs.get(name)
        ]
    return reasons


def _say_replaced(
    out_dir: Path, previous: dict[str, Any], settings: dict[str, Any] | None, inputs: dict[str, str] | None
) -> None:
    """Say which outputs of which finished run are replaced, and why."""
    reasons = changes(previous, settings, inputs)
    if not reasons:  # the same settings and inputs: redone because an output is gone, or on --force
        missing = [name for name in previous.get("outputs", []) if not (out_dir / name).exists()]
        reasons = [f"{', '.join(missing)} missing"] if missing else []
    # Info, not a warning: the user changed something on purpose (hidden by --quiet).
    logger.info(
        "%s: replacing %s of the run finished %s: %s",
        previous.get("stage", out_dir.name),
        ", ".join(previous.get("outputs", [])),
        previous.get("finished", "?"),
        "; ".join(reasons) or "--force, or the code changed",
    )


@dataclass(frozen=True)
class ManifestHead:
    """What a manifest says of the run that wrote it: the stage, its key, the inputs and settings it
    records, and when it started (`time.time()`)."""

    stage: str
    key: str
    inputs: dict[str, str]
    settings: dict[str, Any]
    started: float


def write_manifest(
    out_dir: Path, head: ManifestHead, counts: dict[str, int], outputs: list[str], extra: dict[str, Any] | None = None
) -> None:
    """`out_dir`'s manifest.json (atomically): `head`, the counts, the outputs (names in out_dir), the library
    versions, start and finish times, and `extra`'s keys."""
    finished = time.time()
    payload = {
        "stage": head.stage,
        "key": head.key,
        "inputs": head.inputs,
        "settings": head.settings,
        "counts": counts,
        "outputs": outputs,
        "versions": library_versions(),
        "started": datetime.fromtimestamp(head.started, timezone.utc).isoformat(),
        "finished": datetime.fromtimestamp(finished, timezone.utc).isoformat(),
        "seconds": round(finished - head.started, 3),
    }
    if extra:
        payload.update(extra)
    write_json_atomic(out_dir / MANIFEST, payload)
