"""Staleness matrix: what a change makes stale, for every stage.

Each case starts from a copy of one finished tiny run, changes one thing (an input file,
a setting, the encoder, a stage output) and runs `xel-cli run`: exactly the stages in
its `redone` column must redo their work, every other stage must report "up to date".
A second `run` then finds every stage up to date (the new state is stable).

Per stage, the table has (a) a change of a file it reads, (b) a setting of its own that
changes its output, (c) the encoder, (d) settings that do not change its output (speed,
devices, checkpoint frequency, other stages' settings), which leave it up to date.
Stages read their upstream stages through their manifest keys, so for encode, train,
rerank and evaluate (a) is the upstream change and the deletion of an upstream output
(redone with the same key: nothing downstream redoes).

The reader's stage (rerank) runs only with `rerank.enabled = true`: its cases turn it on
in their first run (`before=READER_ON`), and the reader fine-tunes its own copy of the
encoder (`[rerank] encoder`), so a change of the reader's encoder leaves the paper's
stages up to date.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from conftest import TINY_KB, tiny_mention_records, write_jsonl, write_run_config
from pipeline.core.manifest import read_manifest
from pipeline.encoders.precision import auto_precision

STAGES = ("triage", "encode", "train", "rerank", "evaluate")
ALL = STAGES
DOWNSTREAM_OF_TRIAGE = ("encode", "train", "rerank", "evaluate")
READER_ON = ("rerank.enabled=true",)
# The tiny reader of every run (off until a case turns it on): one epoch of a few mentions.
TINY_READER = {
    "enabled": False,
    "top_k": 3,
    "max_seq_tokens": 80,
    "max_context_tokens": 24,
    "epochs": 1,
    "batch_mentions": 4,
}


@dataclass
class Env:
    """A case's copy of the finished run, its data folder, the run's encoder folder and the reader's."""

    run_dir: Path
    folder: Path
    encoder: Path
    reader_encoder: Path


@dataclass(frozen=True)
class Case:
    id: str
    change: Callable[[Env], list[str]]  # edits files, returns extra CLI args (--set ...)
    redone: tuple[str, ...]  # the stages that must redo; the rest report "up to date"
    before: tuple[str, ...] = field(default=())  # --set of a first run that sets the starting state


def setting(*assignments: str) -> Callable[[Env], list[str]]:
    return lambda env: [arg for assignment in assignments for arg in ("--set", assignment)]


def mentions_changed(env: Env) -> list[str]:
    records = tiny_mention_records()
    doc_id = records[4]["doc_id"]  # every mention of the document: a document has one text (E120)
    records = [
        {**record, "text": record["text"].replace("won the final", "won the match")}
        if record["doc_id"] == doc_id
        else record
        for record in records
    ]
    path = write_jsonl(env.folder / "changed" / "mentions.jsonl", records)
    return ["--set", f"inputs.mentions={path}"]


def mentions_moved(env: Env) -> list[str]:
    """The same content under another path: keys follow content, not paths."""
    path = write_jsonl(env.folder / "moved" / "mentions.jsonl", tiny_mention_records())
    return ["--set", f"inputs.mentions={path}"]


def kb_changed(env: Env) -> list[str]:
    entities = [dict(entity) for entity in TINY_KB]
    entities[3]["description"] = "Capital and largest city of France."
    path = write_jsonl(env.folder / "changed" / "kb.jsonl", entities)
    return ["--set", f"inputs.kb={path}"]


def encoder_weights_changed(env: Env) -> list[str]:
    """Retrained weights of the same shape: the file keeps its name and its size."""
    return weights_changed(env.encoder)


def reader_encoder_weights_changed(env: Env) -> list[str]:
    """The reader's starting encoder retrained (same shape), the run's encoder as it was."""
    return weights_changed(env.reader_encoder)


def weights_changed(encoder: Path) -> list[str]:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = encoder / "model.safetensors"
    size = weights.stat().st_size
    with safe_open(weights, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(weights)
    name = next(k for k, tensor in tensors.items() if tensor.is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[:10] += 0.5
    save_file(tensors, weights, metadata=metadata)
    assert weights.stat().st_size == size
    return []


def encoder_moved(env: Env) -> list[str]:
    """The same weights in another folder: another encoder name."""
    copy = env.folder / "encoder-copy"
    shutil.copytree(env.encoder, copy)
    return ["--set", f"encoder.name={copy}"]


def deleted(relative: str) -> Callable[[Env], list[str]]:
    def change(env: Env) -> list[str]:
        (env.run_dir / relative).unlink()
        return []

    return change


CASES = [
    # id                                         change                                   redone
    Case("nothing-changed", setting(), ()),
    # triage: (a) its input files (content, not path), (b) its settings, (c) the encoder (dense triage)
    Case("triage-input-mentions-changed", mentions_changed, ALL),
    Case("triage-input-kb-changed", kb_changed, ALL),
    Case("triage-input-moved-same-content", mentions_moved, ()),
    Case("triage-setting-k", setting("triage.k=3"), ALL),
    Case("triage-setting-fuzzy-min-score", setting("triage.fuzzy_min_score=85"), ALL),
    Case("triage-setting-oracle", setting("triage.oracle=true"), ALL),
    Case("encoder-weights-changed-same-size", encoder_weights_changed, ALL),
    Case(
        "encoder-weights-changed-without-dense-triage",
        encoder_weights_changed,
        DOWNSTREAM_OF_TRIAGE,
        before=("triage.use_dense=false",),
    ),
    Case("encoder-max-name-tokens-used-by-dense-triage", setting("encoder.max_name_tokens=8"), ALL),
    # encode: (a) its inputs, triage's output (deleted: redone alike), (b) its settings, (c) the encoder
    Case("encode-input-triage-output-deleted", deleted("triage/candidates.parquet"), ("triage",)),
    Case("encode-setting-name-layer", setting("encoder.name_layer=2"), DOWNSTREAM_OF_TRIAGE),
    Case("encode-setting-max-context-tokens", setting("encoder.max_context_tokens=32"), DOWNSTREAM_OF_TRIAGE),
    Case("encode-setting-all-entities", setting("encoder.all_entities=true"), DOWNSTREAM_OF_TRIAGE),
    Case("encode-encoder-moved-same-weights", encoder_moved, DOWNSTREAM_OF_TRIAGE),
    # The precision is part of the encoder's identity: dense triage's index and encode's vectors change.
    Case("encoder-precision-int8", setting("encoder.precision=int8"), ALL),
    Case(
        "encoder-precision-int8-without-dense-triage",
        setting("encoder.precision=int8"),
        DOWNSTREAM_OF_TRIAGE,
        before=("triage.use_dense=false",),
    ),
    # auto spelled out as what it resolves to on this machine: the same vectors, nothing redone.
    Case(
        "encode-not-precision-auto-spelled-out", lambda env: ["--set", f"encoder.precision={auto_precision('cpu')}"], ()
    ),
    # (d) speed and device only
    Case("encode-not-batch-tokens", setting("encoder.batch_tokens=256"), ()),
    Case("encode-not-chunk-texts", setting("encoder.chunk_texts=3"), ()),
    Case("encode-not-device", setting("encoder.device=cpu"), ()),
    # train: (a) encode's output (deleted: redone alike), (b) its settings, (d) what does not change the model
    Case("train-input-vectors-deleted", deleted("encode/vectors.h5"), ("encode",)),
    Case("train-setting-margin", setting("train.margin=0.5"), ("train", "evaluate")),
    Case("train-setting-seed", setting("train.seed=14"), ("train", "evaluate")),
    Case("train-setting-features", setting("train.features=name,context"), ("train", "evaluate")),
    Case("train-setting-train-languages", setting("train.train_languages=en,es"), ("train", "evaluate")),
    Case("train-not-checkpoint-every", setting("train.checkpoint_every=3"), ()),
    Case("train-not-checkpoint-minutes", setting("train.checkpoint_minutes=1"), ()),
    Case("train-not-device", setting("train.device=cpu"), ()),
    # evaluate: (a) train's output (deleted: restored from the final checkpoint), (b) its settings
    Case("evaluate-input-model-deleted", deleted("train/model.pt"), ("train",)),
    Case("evaluate-setting-default-threshold", setting("evaluate.default_threshold=-0.5"), ("evaluate",)),
    Case("evaluate-setting-threshold-mode", setting("evaluate.threshold_mode=fixed"), ("evaluate",)),
    Case("evaluate-setting-nil-clustering", setting("evaluate.nil_clustering=singleton"), ("evaluate",)),
    Case("evaluate-setting-eval-split", setting("evaluate.eval_split=dev"), ("evaluate",)),
    Case("evaluate-output-deleted", deleted("evaluate/system.tab"), ("evaluate",)),
    # rerank: turned on, it runs and evaluate reads it; turned off, evaluate reads the ranker alone again
    Case("rerank-setting-enabled", setting(*READER_ON), ("rerank", "evaluate")),
    Case("rerank-setting-disabled", setting("rerank.enabled=false"), ("evaluate",), before=READER_ON),
    # (a) train's key (the ranker orders its candidates), triage's; train's output deleted (restored, same key)
    Case(
        "rerank-input-ranker-retrained", setting("train.margin=0.5"), ("train", "rerank", "evaluate"), before=READER_ON
    ),
    Case("rerank-input-triage-k", setting("triage.k=3"), ALL, before=READER_ON),
    Case("rerank-input-model-deleted", deleted("train/model.pt"), ("train",), before=READER_ON),
    # (b) its settings; candidates from triage need no ranker
    Case("rerank-setting-top-k", setting("rerank.top_k=2"), ("rerank", "evaluate"), before=READER_ON),
    Case("rerank-setting-form", setting("rerank.form=pairwise"), ("rerank", "evaluate"), before=READER_ON),
    Case(
        "rerank-setting-candidates-triage",
        setting("rerank.candidates=triage"),
        ("rerank", "evaluate"),
        before=READER_ON,
    ),
    Case(
        "rerank-setting-nil-hidden-share",
        setting("rerank.nil_hidden_share=0.5"),
        ("rerank", "evaluate"),
        before=READER_ON,
    ),
    # (c) the reader's own encoder, by content
    Case(
        "rerank-encoder-weights-changed-same-size",
        reader_encoder_weights_changed,
        ("rerank", "evaluate"),
        before=READER_ON,
    ),
    # (d) where it runs; its output deleted (redone with the same key: evaluate stays)
    Case("rerank-not-device", setting("rerank.device=cpu"), (), before=READER_ON),
    Case("rerank-output-deleted", deleted("rerank/reader_scores.parquet"), ("rerank",), before=READER_ON),
]


def reader_on(args: list[str]) -> bool:
    """Whether the last `--set rerank.enabled=...` of `args` turns the reader on (it is off in the base run)."""
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith("rerank.enabled=")]
    return bool(values) and values[-1] == "true"


def stages_run(args: list[str]) -> tuple[str, ...]:
    """The stages `xel-cli run ARGS` runs: rerank only with the reader on."""
    return tuple(stage for stage in STAGES if stage != "rerank" or reader_on(args))


def run_stages(config: Path, run_dir: Path, args: list[str]) -> dict[str, str]:
    """`xel-cli run`; returns {stage: "done" | "up to date"} from its output (every stage it runs)."""
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--run-dir", str(run_dir), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    status = {}
    for line in result.output.splitlines():
        for stage in STAGES:
            if line.startswith(f"{stage}: up to date"):
                status[stage] = "up to date"
            elif line.startswith(f"{stage}: done in"):
                status[stage] = "done"
    assert set(status) == set(stages_run(args)), result.output
    return status


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> dict:
    """A finished tiny run (the reader off) whose encoder and the reader's are copies the cases may change (and
    restore)."""
    folder = tmp_path_factory.mktemp("staleness")
    encoder, reader_encoder = folder / "encoder", folder / "reader-encoder"
    shutil.copytree(tiny_encoder_dir, encoder)
    shutil.copytree(tiny_encoder_dir, reader_encoder)
    config = write_run_config(folder, encoder, rerank={**TINY_READER, "encoder": str(reader_encoder)})
    assert set(run_stages(config, folder / "run", []).values()) == {"done"}
    return {"config": config, "run_dir": folder / "run", "encoder": encoder, "reader_encoder": reader_encoder}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_change_makes_exactly_its_stages_stale(case: Case, base: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(base["run_dir"], run_dir)
    weights_files = [folder / "model.safetensors" for folder in (base["encoder"], base["reader_encoder"])]
    originals = {weights: weights.read_bytes() for weights in weights_files}
    before = [arg for assignment in case.before for arg in ("--set", assignment)]
    try:
        if before:
            run_stages(base["config"], run_dir, before)
        args = before + case.change(Env(run_dir, tmp_path, base["encoder"], base["reader_encoder"]))
        status = run_stages(base["config"], run_dir, args)
        expected = {stage: "done" if stage in case.redone else "up to date" for stage in stages_run(args)}
        assert status == expected
        assert run_stages(base["config"], run_dir, args) == dict.fromkeys(stages_run(args), "up to date")
    finally:
        for weights, original in originals.items():
            if weights.read_bytes() != original:
                weights.write_bytes(original)


def test_every_stage_has_each_kind_of_change() -> None:
    ids = [case.id for case in CASES]
    for stage in STAGES:
        assert any(i.startswith(f"{stage}-input") for i in ids), stage
        assert any(i.startswith(f"{stage}-setting") for i in ids), stage
    assert any(i.startswith("encoder-weights") for i in ids)
    assert any("-not-" in i for i in ids)
    assert len(set(ids)) == len(ids)


def test_manifest_records_what_the_key_hashes(base: dict) -> None:
    """Settings left out of a key (speed, device, checkpoint frequency) are not in the manifest either."""
    encode = read_manifest(base["run_dir"] / "encode")
    train = read_manifest(base["run_dir"] / "train")
    assert not {"batch_tokens", "chunk_texts", "device", "precision"} & set(encode["settings"])
    assert not {"checkpoint_every", "checkpoint_minutes", "device"} & set(train["settings"])
    assert {"margin", "seed", "epochs"} <= set(train["settings"])


def test_a_run_without_the_reader_keys_nothing_on_it(base: dict) -> None:
    """The base run has [rerank] settings but the reader off: no rerank folder, and evaluate's key leaves it out
    (so the paper's pipeline is keyed as it was before the stage existed)."""
    assert not (base["run_dir"] / "rerank").exists()
    assert "rerank" not in read_manifest(base["run_dir"] / "evaluate")["inputs"]


# --- a stage run alone on upstream outputs the config no longer asks for --------------------------------

# (command, --set that changes an upstream stage, the upstream stage it makes stale, what the message says)
ALONE = [
    ("encode", "triage.k=3", "triage", "triage.k: 4 -> 3"),
    ("train", "triage.fuzzy_min_score=85", "triage", "triage.fuzzy_min_score: 70.0 -> 85.0"),
    ("train", "encoder.name_layer=2", "encode", "encoder.name_layer: 1 -> 2"),
    ("rerank", "train.margin=0.5", "train", "train.margin: 1.0 -> 0.5"),
    ("evaluate", "train.margin=0.5", "train", "train.margin: 1.0 -> 0.5"),
    ("evaluate", "encoder.max_context_tokens=32", "encode", "encoder.max_context_tokens: 64 -> 32"),
    ("evaluate", "triage.k=3", "triage", "triage.k: 4 -> 3"),
]


@pytest.mark.parametrize("command, change, stale, said", ALONE, ids=[f"{c}-reads-{s}" for c, _, s, _ in ALONE])
def test_a_stage_run_alone_refuses_an_upstream_output_the_config_no_longer_asks_for(
    base: dict, tmp_path: Path, command: str, change: str, stale: str, said: str
) -> None:
    """`xel-cli evaluate` after a change of train's settings used train's old model, and said "up to date"
    (its key hashes train's manifest, not the config): every stage run alone now checks each upstream stage
    it reads against the config (issue 21), E407 naming the stale one and the command to run; `xel-cli run`
    brings them all up to date instead. rerank (the reader on) reads train too."""
    run_dir = tmp_path / "run"
    shutil.copytree(base["run_dir"], run_dir)
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.name != "config.json"}
    extra = ["--set", "rerank.enabled=true"] if command == "rerank" else []
    args = [command, "--config", str(base["config"]), "--run-dir", str(run_dir), "--set", change, *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(
        f"Error: [E407] {run_dir / stale / 'manifest.json'}: `xel-cli {command}` reads {stale}'s"
    ), result.output
    assert f"({said})" in result.output and f"run `xel-cli {stale}` (or `xel-cli run`)" in result.output, result.output
    assert {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.name != "config.json"} == before


def test_once_the_named_stage_has_run_the_stage_alone_runs(base: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(base["run_dir"], run_dir)
    common = ["--config", str(base["config"]), "--run-dir", str(run_dir), "--set", "train.margin=0.5"]
    assert "[E407]" in CliRunner().invoke(main, ["evaluate", *common]).output
    for command in ("train", "evaluate"):
        result = CliRunner().invoke(main, [command, *common])
        assert result.exit_code == 0 and f"{command}: done in" in result.output, result.output
