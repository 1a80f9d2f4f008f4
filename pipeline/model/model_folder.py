"""A trained linker as a folder: written at the end of evaluate, exported, loaded and checked.

`<run>/model/` holds
- `model.pt`: the ranker's weights and shape (a copy of train's; the nearest-neighbour
  baseline is a model too), with the type vocabularies it was trained with;
- `aliases.parquet`: what triage learned from the training split, (mention, gold_kb_id,
  count), from which the priors P(e|m) and the fuzzy source's training names come;
- `popularity.parquet` (kb_id, count), only when the run re-ranks by popularity (§7.2);
- `reader/`, the rerank stage's reader (`pipeline.model.reader`), only when it decides (rerank.enabled
  and evaluate's NIL method is "reader": link loads it then only); model.json's "reader" holds its
  reader.json (null without one);
- `model.json`: the format and version, the encoder (name, resolved path, identity) and
  its settings, the triage settings, the context width, the NIL policy
  (`pipeline/model/nil_policy.py`), the type vocabularies, the KB trained on (file name,
  path, fingerprint, entity count; link may use another: `pipeline/link/kb_fit.py`), what it was trained on (languages, mention counts, dev scores), the
  xel version, the date, and each file's content fingerprint.

Loading checks model.json's every value (`pipeline/model/model_json.py`: types, finite numbers,
ranges) and every file against its fingerprint, so a damaged, hand-mis-edited or foreign folder
is one coded error (E701-E703, E702 naming the key path) before anything is linked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from pipeline import __version__
from pipeline.core import schema
from pipeline.core.config import RunConfig, to_dict
from pipeline.core.errors import CacheError, InputError
from pipeline.core.io import default_permissions, file_fingerprint, write_json_atomic, write_parquet_atomic
from pipeline.core.manifest import read_manifest
from pipeline.formats import triage_tables
from pipeline.model.aliases import alias_table
from pipeline.model.model_file import MODEL
from pipeline.model.model_json import check_model_json, unknown_key
from pipeline.model.nil_policy import NilPolicy
from pipeline.model.reader import READER_JSON

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
MODEL_JSON = "model.json"
FORMAT = "xel-linker"
FORMAT_VERSION = 1
RANKER = MODEL  # a copy of train's model.pt
ALIASES = "aliases.parquet"
POPULARITY = "popularity.parquet"
READER_DIR = "reader"  # the rerank stage's reader (`pipeline.model.reader`), when the run has one


def _model_json(
    config: RunConfig, nil_artifact: dict, metrics: dict | None, saved: dict, mentions: pl.DataFrame
) -> dict:
    """model.json's description of the linker (the files and the reader are added by the caller): the
    encoder's identity and settings, triage's settings, the NIL decision, the types, the KB and what the
    model was trained on."""
    run_dir, triage_dir, train_dir = config.run_dir, config.stage_dir("triage"), config.stage_dir("train")
    train_manifest = read_manifest(train_dir) or {}
    triage_manifest = read_manifest(triage_dir) or {}
    policy = NilPolicy.from_artifact(nil_artifact, config.evaluate.nil_clustering)
    from pipeline.encoders.encoder import encoder_identity, resolve_encoder_path

    encoder_path = resolve_encoder_path(config.encoder.name)
    counts = mentions.group_by("split", "lang").len().sort("split", "lang")
    by_split: dict[str, dict[str, int]] = {}
    for split, lang, count in counts.iter_rows():
        by_split.setdefault(split, {})[lang] = count
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xel_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "encoder": {
            "name": config.encoder.name,
            "path": encoder_path,
            "identity": encoder_identity(encoder_path),
            "settings": to_dict(config.encoder),
        },
        # crossfit_folds shapes the training split's candidates only: link never cross-fits, and a folder
        # without the key stays readable by releases that came before it.
        "triage": {k: v for k, v in to_dict(config.triage).items() if k != "crossfit_folds"},
        "inputs": {"context_chars": config.inputs.context_chars},
        "nil": policy.to_json(),
        "popularity_rerank": config.evaluate.popularity_rerank,
        "types": {"mention": list(saved.get("mention_types") or []), "entity": list(saved.get("entity_types") or [])},
        "kb": {
            "name": config.inputs.kb.name,
            "path": str(config.inputs.kb),
            "fingerprint": triage_manifest.get("inputs", {}).get("kb"),
            "entities": triage_manifest.get("counts", {}).get("entities"),
        },
        "trained_on": {
            "languages": sorted(by_split.get("train", {})),
            "mentions": by_split,
            "train_mentions_by_language": train_manifest.get("train_mentions_by_language", {}),
            "features": list(saved.get("shape", {}).get("features", [])) or ["nearest-neighbour baseline"],
            "best_dev_accuracy": train_manifest.get("best_dev_accuracy"),
            "best_epoch": saved.get("best_epoch"),
            "evaluation": {
                "split": (metrics or {}).get("split"),
                "micro_average": (metrics or {})
                .get("overall", {})
                .get("kbp2010_micro_average", {})
                .get("micro_average"),
            },
        },
    }
    return meta


def write_model_folder(
    config: RunConfig, nil_artifact: dict, metrics: dict | None = None, saved: dict | None = None
) -> Path:
    """Write `<run>/model/` from a run whose triage, encode and train are finished; returns it.

    Called once at the end of evaluate with the NIL decision it used (its `nil.json`:
    method, per-language thresholds, classifier parameters). Built in a
    temporary folder and renamed into place, so a kill never leaves a folder that loads.
    """
    import torch

    run_dir = config.run_dir
    triage_dir, train_dir = config.stage_dir("triage"), config.stage_dir("train")
    mentions = triage_tables.read(
        triage_dir, triage_tables.MENTIONS, "mention_id", "mention", "lang", "split", "gold_kb_id"
    )
    if saved is None:  # evaluate passes what it loaded (`model_file.load_model`'s metadata)
        saved = torch.load(train_dir / RANKER, map_location="cpu", weights_only=False)
    folder = run_dir / MODEL_DIR
    temp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}.", suffix=".tmp", dir=run_dir))
    try:
        shutil.copyfile(train_dir / RANKER, temp / RANKER)
        write_parquet_atomic(alias_table(mentions.filter(pl.col("split") == "train")), temp / ALIASES)
        files = [RANKER, ALIASES]
        if config.evaluate.popularity_rerank:
            trained = mentions.filter(
                pl.col("mention_id").is_in(saved.get("train_mention_ids", [])) & schema.linked_gold()
            )
            write_parquet_atomic(
                trained.group_by(pl.col("gold_kb_id").alias("kb_id")).agg(pl.len().alias("count")), temp / POPULARITY
            )
            files.append(POPULARITY)
        reader_meta = None
        # The reader travels with the linker only where it decides (NIL method "reader"): link applies it as
        # evaluate did then, and never loads it otherwise, so a copy of it (hundreds of MB) would be dead weight.
        if config.rerank.enabled and nil_artifact.get("method") == "reader":
            shutil.copytree(config.stage_dir("rerank") / READER_DIR, temp / READER_DIR)
            files += sorted(str(path.relative_to(temp)) for path in (temp / READER_DIR).rglob("*") if path.is_file())
            reader_meta = {
                "folder": READER_DIR,
                **json.loads((temp / READER_DIR / READER_JSON).read_text(encoding="utf-8")),
            }
        meta = _model_json(config, nil_artifact, metrics, saved, mentions)
        meta["reader"] = reader_meta
        meta["files"] = {name: file_fingerprint(temp / name) for name in files}
        write_json_atomic(temp / MODEL_JSON, meta)
        shutil.rmtree(folder, ignore_errors=True)
        default_permissions(temp)
        os.replace(temp, folder)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return folder


def export_model(run_dir: Path, out_dir: Path) -> Path:
    """Copy `<run_dir>/model/` (checked first) to `out_dir`, which must not hold anything else."""
    source = (
        run_dir / MODEL_DIR if (run_dir / MODEL_DIR / MODEL_JSON).exists() or run_dir.name != MODEL_DIR else run_dir
    )
    if not (source / MODEL_JSON).exists():
        raise CacheError("E712", path=run_dir)
    load_model_folder(source)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError("E713", path=out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for path in source.iterdir():
            if path.is_file() and not path.name.startswith("."):
                shutil.copyfile(path, temp / path.name)
            elif path.name == READER_DIR and path.is_dir():
                shutil.copytree(path, temp / path.name)
        if out_dir.exists():
            out_dir.rmdir()
        default_permissions(temp)
        os.replace(temp, out_dir)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out_dir


@dataclass(frozen=True)
class ModelFolder:
    """A checked model folder: its path, model.json, the NIL policy and the alias table."""

    path: Path
    meta: dict
    policy: NilPolicy
    aliases: pl.DataFrame
    popularity: pl.DataFrame | None

    @property
    def fingerprint(self) -> str:
        """Identity of the whole linker: model.json names every file's content."""
        return file_fingerprint(self.path / MODEL_JSON)


def ranker_mismatch(meta: dict, saved: dict, hidden_size: int | None = None) -> str | None:
    """Where model.json (`meta`, checked by `load_model_folder`) disagrees with the ranker it describes
    (`saved`, model.pt's metadata: `model_file.load_model`), as `key.path: must be X (got Y)` for E702;
    None when it agrees. Compared: the mention and entity type vocabularies (the ranker's one-hot type
    inputs are as wide as they are, in their order), `trained_on.features` (the ranker's features) and
    the width of the encoder's vectors (`hidden_size`, None: not known yet) with the ranker's, and
    `encoder.settings.name_layer` with the layer model.pt's name vectors came from (when it says), and
    `nil.method` "nota" with whether the ranker has the NIL option it reads."""
    shape = saved.get("shape") or {}
    expected = {
        "types.mention": list(saved.get("mention_types") or []),
        "types.entity": list(saved.get("entity_types") or []),
    }
    for where, value in expected.items():
        found = meta["types"][where.split(".")[1]]
        if list(found) != value:
            return f"{where}: must be {value}, the types model.pt was trained with, in that order (got {found})"
    features = (meta.get("trained_on") or {}).get("features")
    trained = list(shape.get("features", [])) or ["nearest-neighbour baseline"]
    if features and list(features) != trained:
        return f"trained_on.features: must be {trained}, model.pt's features (got {features})"
    trained_layer, layer = saved.get("name_layer"), meta["encoder"]["settings"].get("name_layer")
    if trained_layer is not None and layer != trained_layer:  # None: a model.pt from before it was recorded
        return (
            f"encoder.settings.name_layer: must be {trained_layer}, the hidden layer the ranker in model.pt "
            f"read names from (got {layer})"
        )
    if meta["nil"]["method"] == "nota" and not shape.get("nil_candidate", False):
        return (
            "nil.method: must not be 'nota', the ranker in model.pt has no NIL option (trained with "
            "train.nil_candidate = false) (got 'nota')"
        )
    width = shape.get("vector_size")
    if hidden_size is not None and width is not None and int(width) != hidden_size:
        return (
            f"encoder.name: its encoder gives vectors of {hidden_size} dimensions, "
            f"the ranker in model.pt reads {width} (got {meta['encoder']['name']})"
        )
    return None


def _why_not_a_model_folder(path: Path) -> str:
    """E701's detail for a path with no model.json: it does not exist, is a file, or is a folder without one."""
    if not path.exists():
        return "no such file or folder"
    if not path.is_dir():
        return f"a file, not a folder holding {MODEL_JSON}"
    return f"no {MODEL_JSON}"


def _likelier_model_folder(path: Path) -> str:
    """E701's first advice when `path` is a run folder (or holds a model folder): its `model/`, by name."""
    inner = path / "model"
    if (inner / MODEL_JSON).is_file():
        return f"did you mean {inner}? "
    return ""


def _fix_for(problem: str) -> str:
    """E702's first advice for a `check_model_json` problem: add a missing key ("" or "key.path: Field
    required"), else correct the value."""
    missing = not problem or re.match(r"[\w.]+: Field required", problem)
    return "add that key, or " if missing else "correct that value, or "


def load_model_folder(path: Path) -> ModelFolder:
    """Read and check a model folder. E701: not one; E702: damaged, or a value of model.json of the
    wrong type or range (naming its key path, e.g. `nil.thresholds.en`); E703: a newer format; E716: a
    key model.json's schema does not know (naming its key path and the closest known key)."""
    path = Path(path)
    meta_path = path / MODEL_JSON
    if not path.is_dir() or not meta_path.is_file():
        raise CacheError(
            "E701", path=path, detail=_why_not_a_model_folder(path), fix_first=_likelier_model_folder(path)
        )
    try:
        text = meta_path.read_text(encoding="utf-8")
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError("E702", path=meta_path, detail=f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CacheError("E701", path=path, detail=f"{MODEL_JSON} does not say format = {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:  # a type error, not a newer format
        detail = f"format_version: must be a whole number of at least 1, as written (got {version!r})"
        raise CacheError("E702", path=meta_path, detail=detail, fix_first=_fix_for("" if version is None else detail))
    if version > FORMAT_VERSION:
        raise CacheError("E703", path=meta_path, found=version, supported=FORMAT_VERSION)
    unknown = unknown_key(meta)  # a misspelt key is not silently ignored: the setting it meant would be
    if unknown is not None:
        key, hint, known = unknown
        raise CacheError("E716", path=meta_path, key=key, hint=hint, known=", ".join(known))
    problem = check_model_json(text)  # every value's type, finiteness and range, before any is used
    if problem is not None:
        raise CacheError("E702", path=meta_path, detail=problem, fix_first=_fix_for(problem))
    try:
        files = meta["files"]
        for name, expected in files.items():
            if not (path / name).is_file():
                raise CacheError("E702", path=path / name, detail="listed in model.json but missing")
            if file_fingerprint(path / name) != expected:
                raise CacheError(
                    "E702", path=path / name, detail="its content differs from the fingerprint in model.json"
                )
        policy = NilPolicy.from_json(meta["nil"])
        reader = meta.get("reader")
        if reader is not None and not (isinstance(reader, dict) and isinstance(reader.get("layout"), dict)):
            raise TypeError("'reader' is not an object with a 'layout'")
        if reader is None and policy.artifact["method"] == "reader":
            raise ValueError("the NIL method is the reader, and the model holds none")
        for key in ("encoder", "triage", "inputs", "types", "kb"):
            if not isinstance(meta[key], dict):
                raise TypeError(f"'{key}' is not an object")
        aliases = pl.read_parquet(path / ALIASES)
        popularity = pl.read_parquet(path / POPULARITY) if POPULARITY in files else None
        if meta.get("popularity_rerank") and popularity is None:
            raise ValueError(f"popularity_rerank is true, and the folder holds no {POPULARITY} to rerank by")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CacheError(
            "E702", path=meta_path, detail=f"missing or malformed entry ({type(exc).__name__}: {exc})"
        ) from None
    if RANKER not in files or ALIASES not in files:
        raise CacheError("E702", path=meta_path, detail=f"does not list {RANKER} and {ALIASES}")
    return ModelFolder(path, meta, policy, aliases, popularity)
