"""The reader's triage evidence (`[rerank] triage_evidence`): each candidate's summed triage score and
sources reach its logit through a small network, on every path that builds a reader's batch.

The learning test is a task only the evidence decides: every mention has two candidates with the
same text, and the gold is the one the alias prior proposed. A reader without the evidence cannot
tell them apart; one with it must.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.core.schema import TRIAGE_SOURCES
from pipeline.model import reader_inputs
from pipeline.model.reader import build_examples, load_reader, new_reader, reader_predictions, save_reader
from pipeline.model.reader_inputs import EVIDENCE_WIDTH, Layout, Specials, reading
from pipeline.rerank.training import labelled_batch, new_training

MARKS = Specials(cls=1, sep=2, pad=0, mention_start=3, mention_end=4, nil=5, entity=6)
PRIOR, DENSE = TRIAGE_SOURCES.index("prior"), TRIAGE_SOURCES.index("dense")


def vector(score: float, *sources: str) -> list[float]:
    return [1.0, score] + [float(source in sources) for source in TRIAGE_SOURCES]


@pytest.mark.parametrize("form", ["listwise", "pairwise"])
def test_each_candidates_evidence_lands_on_its_own_slot(form: str) -> None:
    context, candidates = [10, 3, 11, 4, 12], [[20, 21], [30]]
    evidence = [vector(1.5, "prior", "dense"), vector(0.25, "fuzzy")]
    item = reading(context, candidates, ["a", "b"], Layout(40, 8, 2, form), MARKS, evidence)
    batch, rows, slots, mask = reader_inputs.collate_readings([item], 3, MARKS.pad, torch.device("cpu"))
    assert batch.evidence.shape == (len(item.sequences), batch.slot_mask.shape[1], EVIDENCE_WIDTH)
    picked = batch.evidence[rows[0], slots[0]]  # (3, EVIDENCE_WIDTH): NIL, a, b
    assert picked[0].tolist() == [0.0] * EVIDENCE_WIDTH  # the NIL option has none
    assert picked[1].tolist() == evidence[0] and picked[2].tolist() == evidence[1]


def test_the_evidence_table_reads_triage_score_and_sources() -> None:
    top = pl.DataFrame(
        {
            "mention_id": ["m1", "m1"],
            "kb_id": ["Q1", "Q2"],
            "slot": [1, 2],
            "triage_score": [1.75, None],
            "sources": [["prior", "kb_name"], None],
        }
    )
    table = reader_inputs.evidence_table(top)
    assert table["m1"]["Q1"] == [1.0, 1.75, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert table["m1"]["Q2"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_candidate_order_keeps_triage_evidence_for_top_candidates() -> None:
    candidates = pl.DataFrame(
        {
            "mention_id": ["m1"] * 3,
            "rank": [1, 2, 3],
            "kb_id": ["Q1", "Q2", "Q3"],
            "score": [2.0, 1.0, 0.5],
            "sources": [["prior"], ["dense"], ["fuzzy"]],
        }
    )
    ranker = pl.DataFrame({"mention_id": ["m1"] * 3, "kb_id": ["Q1", "Q2", "Q3"], "score": [0.1, 0.9, 0.5]})
    top = reader_inputs.top_candidates(reader_inputs.candidate_order(candidates, ranker), 2)
    assert top.select("kb_id", "slot", "triage_score").rows() == [("Q2", 1, 1.0), ("Q3", 2, 0.5)]
    assert top["sources"].to_list() == [["dense"], ["fuzzy"]]


def test_an_untrained_evidence_network_changes_no_score(tiny_encoder_dir: Path) -> None:
    plain, _ = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13)
    with_evidence, _ = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13, evidence=True)
    with_evidence.load_state_dict(plain.state_dict(), strict=False)
    item = reading([10, 3, 11, 4, 12], [[20, 21], [30]], ["a", "b"], Layout(40, 8, 2), MARKS)
    evidence = item._replace(evidence=[vector(3.0, "prior"), vector(0.1, "dense")])
    plain.eval(), with_evidence.eval()
    one = plain(reader_inputs.collate_readings([item], 3, 0, torch.device("cpu"))[0])
    two = with_evidence(reader_inputs.collate_readings([evidence], 3, 0, torch.device("cpu"))[0])
    assert torch.equal(one, two)
    with pytest.raises(ValueError, match="triage evidence"):
        with_evidence(reader_inputs.collate_readings([item], 3, 0, torch.device("cpu"))[0])


def twin_candidates(count: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(mentions, top candidates, entities): each mention has two candidates with the same text; its gold
    is the one the prior proposed (score 1.5, sources prior + dense), the other only dense (score 0.4)."""
    rng = np.random.default_rng(seed)
    mentions, top = [], []
    for number in range(count):
        gold, other = ("A", "B") if rng.random() < 0.5 else ("B", "A")
        mention_id = f"m{number}"
        mentions.append(
            {
                "mention_id": mention_id,
                "context": "Yesterday Acme was new .",
                "start": 10,
                "end": 14,
                "gold_kb_id": gold,
            }
        )
        order = [gold, other] if rng.random() < 0.5 else [other, gold]
        for slot, kb_id in enumerate(order, start=1):
            prior = kb_id == gold
            top.append(
                {
                    "mention_id": mention_id,
                    "kb_id": kb_id,
                    "slot": slot,
                    "triage_score": 1.5 if prior else 0.4,
                    "sources": ["prior", "dense"] if prior else ["dense"],
                }
            )
    entities = pl.DataFrame(
        {"kb_id": ["A", "B"], "name": ["Acme", "Acme"], "type": ["ORG", "ORG"], "description": ["a firm", "a firm"]}
    )
    return pl.DataFrame(mentions), pl.DataFrame(top), entities


def right_share(reader, examples) -> float:
    from pipeline.model.reader import score_mentions

    best = reader_predictions(score_mentions(reader, examples, torch.device("cpu"), "fp32"))
    joined = pl.DataFrame({"mention_id": examples.mention_ids, "gold": examples.gold}).join(best, on="mention_id")
    assert joined.height == len(examples.mention_ids)
    return float((joined["reader_kb_id"] == joined["gold"]).mean())


@pytest.mark.parametrize("evidence", [False, True])
def test_the_reader_learns_what_only_the_evidence_decides(tiny_encoder_dir: Path, evidence: bool) -> None:
    torch.manual_seed(0)
    reader, tokenizer = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13, evidence=evidence)
    layout = Layout(48, 16, 2)
    train = build_examples(tokenizer, *twin_candidates(32, seed=1), layout, with_evidence=evidence)
    test = build_examples(tokenizer, *twin_candidates(40, seed=2), layout, with_evidence=evidence)
    state = new_training(reader, (1e-4, 1e-2), total_steps=60)
    rows = np.arange(len(train.mention_ids))
    reader.train()
    for _ in range(60):
        readings, labels = labelled_batch(train, rows, np.zeros(len(rows), dtype=bool), None, torch.device("cpu"))
        loss = torch.nn.functional.cross_entropy(reader_inputs_read(reader, readings, train), labels)
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.schedule.step()
    accuracy = right_share(reader, test)
    if evidence:
        assert accuracy == 1.0
    else:  # the two candidates' sequences are the same text: the reader can only guess
        assert 0.3 <= accuracy <= 0.7


def reader_inputs_read(reader, readings, examples) -> torch.Tensor:
    from pipeline.model.reader import read

    return read(reader, readings, examples.layout.top_k + 1, examples.marks, torch.device("cpu"))


def test_a_saved_reader_keeps_its_evidence_network(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    reader, tokenizer = new_reader(str(tiny_encoder_dir), torch.device("cpu"), seed=13, evidence=True)
    torch.nn.init.normal_(reader.evidence_score[-1].weight)
    meta = {"layout": {"max_seq_tokens": 48, "max_context_tokens": 16, "top_k": 2}, "triage_evidence": True}
    save_reader(reader, tokenizer, tmp_path / "reader", meta)
    loaded, _, read_meta = load_reader(tmp_path / "reader", torch.device("cpu"))
    assert read_meta["triage_evidence"] is True
    assert torch.equal(loaded.evidence_score[-1].weight, reader.evidence_score[-1].weight)

    # reader.json that says "no evidence" against a head.pt that has it: damage, not a silent drop
    (tmp_path / "reader" / "reader.json").write_text(json.dumps({**meta, "triage_evidence": False}))
    from pipeline.core.errors import CacheError

    with pytest.raises(CacheError, match="E402"):
        load_reader(tmp_path / "reader", torch.device("cpu"))


def test_the_stage_and_link_read_the_evidence_alike(base_run_for_evidence: dict, tmp_path: Path) -> None:
    from conftest import tiny_mention_records
    from pipeline.link.linker import Linker
    from pipeline.model.model_folder import export_model

    run_dir = base_run_for_evidence["run_dir"]
    meta = json.loads((run_dir / "rerank" / "reader" / "reader.json").read_text())
    assert meta["triage_evidence"] is True and meta["cast_weights"] is True
    head = torch.load(run_dir / "rerank" / "reader" / "head.pt", weights_only=True)
    assert any(name.startswith("evidence_score.") for name in head)
    manifest = json.loads((run_dir / "rerank" / "manifest.json").read_text())
    assert manifest["settings"]["triage_evidence"] is True

    # a training-only setting: left out of model.json, so releases before it still read the folder
    assert "crossfit_folds" not in json.loads((run_dir / "model" / "model.json").read_text())["triage"]

    linker = Linker.load(export_model(run_dir, tmp_path / "exported"))
    records = [r for r in tiny_mention_records() if r["split"] == "test"]
    links = linker.link(records)
    evaluated = pl.read_parquet(run_dir / "evaluate" / "predictions.parquet").filter(pl.col("split") == "test")
    want = evaluated.select(
        "mention_id", pl.when(pl.col("is_nil")).then(pl.lit("NIL")).otherwise("system_id").alias("want")
    )
    got = links.select("mention_id", pl.when(pl.col("is_nil")).then(pl.lit("NIL")).otherwise("kb_id").alias("got"))
    joined = got.join(want, on="mention_id")
    assert joined.height == len(records) and (joined["got"] == joined["want"]).all(), joined

    # model.json's record of how the reader scores must agree with reader.json's (a helper found it unread)
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(run_dir / "model", edited)
    meta_json = json.loads((edited / "model.json").read_text())
    meta_json["reader"]["cast_weights"] = False
    (edited / "model.json").write_text(json.dumps(meta_json))
    from pipeline.core.errors import CacheError

    with pytest.raises(
        CacheError, match=r"E702.*reader.cast_weights: must match reader/reader.json's true \(got false\)"
    ):
        Linker.load(edited)
    del meta_json["reader"]["cast_weights"]
    (edited / "model.json").write_text(json.dumps(meta_json))
    with pytest.raises(CacheError, match=r"reader.cast_weights: must match .* true \(missing\)\); add that key"):
        Linker.load(edited)
    meta_json["reader"].update(cast_weights=True, triage_evidence=False)  # any key that decides how it reads
    (edited / "model.json").write_text(json.dumps(meta_json))
    with pytest.raises(CacheError, match=r"reader.triage_evidence: must match reader/reader.json's true \(got false\)"):
        Linker.load(edited)


@pytest.fixture(scope="module")
def base_run_for_evidence(tmp_path_factory, tiny_encoder_dir: Path) -> dict:
    """A finished tiny run whose reader reads triage evidence and decides NIL (evaluate.nil_method)."""
    from conftest import write_run_config

    folder = tmp_path_factory.mktemp("evidence-run")
    rerank = {
        "enabled": True,
        "top_k": 3,
        "max_seq_tokens": 80,
        "max_context_tokens": 24,
        "epochs": 1,
        "batch_mentions": 4,
        "learning_rate": 1e-3,
        "triage_evidence": True,
        "precision": "bf16",  # the stage and link both score with bf16 weights (reader.json's cast_weights)
    }
    config = write_run_config(
        folder, tiny_encoder_dir, rerank=rerank, evaluate={"nil_method": "reader", "nil_mention_prior": False}
    )
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"config": config, "run_dir": folder / "run", "output": result.output}


def test_evidence_without_cross_fitted_triage_is_warned_of(base_run_for_evidence: dict) -> None:
    # the tiny run keeps [triage] crossfit_folds = 0, so its training priors come from its own labels
    assert "W510" in base_run_for_evidence["output"]
    assert "set triage.crossfit_folds = 5" in base_run_for_evidence["output"]


def test_the_reader_bench_runs_the_stages_own_reader(base_run_for_evidence: dict) -> None:
    """bench/rerank.py builds the reader as the stage does (frozen layers, evidence, the head's own rate):
    it had fallen behind the stage once, and nothing ran it."""
    import importlib.util

    from pipeline.core.config_file import load_config

    spec = importlib.util.spec_from_file_location("bench_rerank", Path(__file__).parents[2] / "bench" / "rerank.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = load_config(base_run_for_evidence["config"], ("rerank.freeze_layers=1", "rerank.batch_mentions=1"))
    assert bench.training_rate(config, "fp32", 2, torch.device("cpu")) > 0
    assert all(bench.scoring_rate(config, mode, torch.device("cpu")) > 0 for mode in bench.SCORING_MODES)
    with_reader, without = bench.link_rates(config, 4, "cpu", repeats=1)
    assert with_reader > 0 and without > 0
    assert bench.stage_counts(config)["train_mentions"] > 0
