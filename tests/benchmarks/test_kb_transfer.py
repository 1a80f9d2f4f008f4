"""bench/kb_transfer.py: the micro-average and alias baseline it prints, and its entity-disjoint cut."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import polars as pl
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "kb_transfer.py"
spec = importlib.util.spec_from_file_location("kb_transfer", SCRIPT)
kb_transfer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kb_transfer)

CANDIDATE = pl.Struct(
    {"kb_id": pl.String, "score": pl.Float64, "triage_score": pl.Float64, "sources": pl.List(pl.String)}
)


def write_links(path: Path) -> Path:
    """Four mentions: m1 linked right, m2 NIL (gold NIL), m3 linked wrong (triage's top is right), m4 NIL
    without candidates (gold an entity)."""

    def candidate(kb_id: str, score: float, triage: float) -> dict:
        return {"kb_id": kb_id, "score": score, "triage_score": triage, "sources": ["kb_name"]}

    pl.DataFrame(
        {
            "mention_id": ["m1", "m2", "m3", "m4"],
            "kb_id": ["A", "NIL0001", "B", "NIL0002"],
            "is_nil": [False, True, False, True],
            "candidates": [
                [candidate("A", 0.9, 1.0), candidate("B", 0.1, 0.5)],
                [candidate("B", -0.9, 2.0)],
                [candidate("B", 0.5, 0.3), candidate("C", 0.2, 1.5)],
                [],
            ],
        },
        schema_overrides={"candidates": pl.List(CANDIDATE)},
    ).write_parquet(path)
    return path


def test_micro_average_counts_nil_for_nil_and_the_alias_baseline_takes_triages_top(tmp_path: Path) -> None:
    links = kb_transfer.links_table(write_links(tmp_path / "links.parquet"))
    assert links.sort("mention_id")["top_triage_kb_id"].to_list() == ["A", "B", "C", None]
    gold = pl.DataFrame({"mention_id": ["m1", "m2", "m3", "m4"], "gold_kb_id": ["A", "NIL", "C", "D"]})
    assert kb_transfer.micro_average(links, gold) == pytest.approx(0.5)  # m1, m2
    assert kb_transfer.micro_average(links, gold, "top_triage_kb_id") == pytest.approx(0.5)  # m1, m3
    assert kb_transfer.micro_average(links, gold.head(1)) == pytest.approx(1.0)


def test_pooled_micro_average_counts_every_folds_mentions(tmp_path: Path) -> None:
    links = kb_transfer.links_table(write_links(tmp_path / "links.parquet"))
    gold = pl.DataFrame({"mention_id": ["m1", "m2", "m3", "m4"], "gold_kb_id": ["A", "NIL", "C", "D"]})
    # 2 of 4 right in the first pair, 1 of 1 in the second: 3 of 5, not the mean of 0.5 and 1.0.
    pooled = kb_transfer.pooled_micro_average([(links, gold), (links, gold.head(1))])
    assert pooled == pytest.approx(0.6)
    assert math.isnan(kb_transfer.pooled_micro_average([(links, gold.head(0))]))


def test_disjoint_cut_is_fixed_and_renamed_ids_share_nothing(tmp_path: Path) -> None:
    ids = [f"enwiki:E{i}" for i in range(200)]
    seen = kb_transfer.seen_half(ids)
    assert seen == kb_transfer.seen_half(list(reversed(ids))) and 70 < len(seen) < 130
    other = kb_transfer.seen_half(ids, fold=1)
    assert not seen & other and seen | other == set(ids)  # every entity seen in exactly one fold
    source = tmp_path / "kb.jsonl"
    source.write_text("".join(json.dumps({"kb_id": i, "name": i[7:]}) + "\n" for i in ids), encoding="utf-8")
    renamed = kb_transfer.renamed_kb(source, tmp_path / "renamed.jsonl")
    written = pl.read_ndjson(tmp_path / "renamed.jsonl")
    assert written["kb_id"].to_list() == [renamed[i] for i in ids] and not set(ids) & set(renamed.values())
    assert written["name"].to_list() == [i[7:] for i in ids] and len(set(renamed.values())) == 200


def test_wrong_links_of_unseen_entities_are_counted_by_where_they_went() -> None:
    links = pl.DataFrame(
        {
            "mention_id": ["m1", "m2", "m3", "m4"],
            "kb_id": ["S", "U2", "U1", None],
            "is_nil": [False, False, False, True],
        }
    )
    unseen_gold = pl.DataFrame({"mention_id": ["m1", "m2", "m3", "m4"], "gold_kb_id": ["U1", "U1", "U1", "U1"]})
    # m1 went to a seen entity, m2 to another unseen one, m3 is right, m4 is NIL (not a wrong entity).
    line = kb_transfer.wrong_to_seen(links, unseen_gold, {"S"})
    assert line.endswith("wrong entity: 2, 1 of them to a seen one")


@pytest.mark.parametrize("training_kb", ["half", "full"])
def test_the_seen_half_trains_on_its_mentions_and_with_half_on_its_entities_alone(
    tmp_path: Path, training_kb: str
) -> None:
    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps({"kb_id": i, "name": i}) + "\n" for i in ["A", "B", "C"]), encoding="utf-8")
    mentions = pl.DataFrame({"id": ["m1", "m2", "m3"], "gold_kb_id": ["A", "B", "NIL"]})
    overrides = kb_transfer._seen_half_inputs(mentions, kb, {"A", "C"}, tmp_path / "fold0", training_kb)
    assert overrides[0] == f"inputs.mentions={tmp_path / 'fold0' / 'mentions-seen-half.jsonl'}"
    assert pl.read_ndjson(tmp_path / "fold0" / "mentions-seen-half.jsonl")["id"].to_list() == ["m1", "m3"]
    if training_kb == "full":
        assert len(overrides) == 1  # the config's KB: B is a candidate in training, never gold
    else:
        assert overrides[1] == f"inputs.kb={tmp_path / 'fold0' / 'kb-seen-half.jsonl'}"
        assert pl.read_ndjson(tmp_path / "fold0" / "kb-seen-half.jsonl")["kb_id"].to_list() == ["A", "C"]
