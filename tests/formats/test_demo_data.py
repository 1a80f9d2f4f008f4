"""Sanity checks for the built-in demo dataset (pipeline/demo_data)."""

import json
from collections import defaultdict
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2] / "pipeline" / "demo_data"
KB_PATH = DATA_DIR / "kb.jsonl"
MENTIONS_PATH = DATA_DIR / "mentions.jsonl"

KB_TYPES = {"PER", "ORG", "LOC", "GPE", "EVENT", "PRODUCT"}
SPLITS = {"train", "dev", "test"}


def _read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:  # pragma: no cover - failure path
                pytest.fail(f"{path.name}:{lineno}: invalid JSON ({exc})")
    return rows


@pytest.fixture(scope="module")
def kb():
    return _read_jsonl(KB_PATH)


@pytest.fixture(scope="module")
def mentions():
    return _read_jsonl(MENTIONS_PATH)


def test_files_parse(kb, mentions):
    assert kb, "kb.jsonl is empty"
    assert mentions, "mentions.jsonl is empty"
    assert all(isinstance(r, dict) for r in kb + mentions)


def test_kb_entities(kb):
    assert len(kb) >= 60
    ids = [r["kb_id"] for r in kb]
    assert len(ids) == len(set(ids)), "duplicate kb_id"
    for r in kb:
        for field in ("name", "description", "type"):
            assert isinstance(r.get(field), str) and r[field].strip(), (r.get("kb_id"), field)
        assert r["type"] in KB_TYPES, (r["kb_id"], r["type"])
        assert isinstance(r.get("aliases", []), list)
        for alias in r.get("aliases", []):
            assert alias.get("text") and alias.get("lang"), r["kb_id"]


def test_mention_ids_unique(mentions):
    ids = [m["id"] for m in mentions]
    assert len(ids) == len(set(ids)), "duplicate mention id"


def test_offsets_match_mention(mentions):
    for m in mentions:
        assert isinstance(m["start"], int) and isinstance(m["end"], int), m["id"]
        assert 0 <= m["start"] < m["end"] <= len(m["text"]), m["id"]
        assert m["text"][m["start"] : m["end"]] == m["mention"], m["id"]


def test_gold_ids_in_kb(kb, mentions):
    kb_ids = {r["kb_id"] for r in kb}
    for m in mentions:
        assert m["gold_kb_id"] == "NIL" or m["gold_kb_id"] in kb_ids, (m["id"], m["gold_kb_id"])


def test_size_and_languages(mentions):
    assert len(mentions) >= 150
    langs = {m["lang"] for m in mentions}
    assert len(langs) >= 6
    assert {"zh", "ar", "ru", "es"} <= langs


def test_every_language_in_every_split(mentions):
    splits_by_lang = defaultdict(set)
    for m in mentions:
        assert m["split"] in SPLITS, (m["id"], m["split"])
        splits_by_lang[m["lang"]].add(m["split"])
    for lang, splits in splits_by_lang.items():
        assert splits == SPLITS, (lang, sorted(splits))


def test_doc_in_single_split(mentions):
    split_by_doc = defaultdict(set)
    for m in mentions:
        split_by_doc[m["doc_id"]].add(m["split"])
    spanning = {d: s for d, s in split_by_doc.items() if len(s) > 1}
    assert not spanning, spanning


def test_nil_in_every_language(mentions):
    langs = {m["lang"] for m in mentions}
    nil_langs = {m["lang"] for m in mentions if m["gold_kb_id"] == "NIL"}
    assert nil_langs == langs, sorted(langs - nil_langs)
