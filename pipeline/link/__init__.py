"""Linking new, unlabeled corpora with a trained linker (`xel-cli link`, `Linker`).

The `model/` folder a run leaves after evaluate (`pipeline.model.model_folder`) and its NIL
decision (`pipeline.model.nil_policy`) sit below the stages, since evaluate writes them.

- `cache`: KB indexes and entity vectors kept across runs, by KB content and encoder;
- `sources`: mentions read chunk by chunk (JSONL, Parquet, TAC `.tab`);
- `linker`: `Linker.load(path).link(mentions)`, the stages' functions applied per chunk;
- `kb_fit`: how a model fits a KB other than its own (alias table ids, `--kb-map`, unknown types);
- `outputs`: links.parquet, links.jsonl, system.tab (+ metrics.json with --score);
- `run`: the chunked, resumable, shardable command.
"""

from __future__ import annotations


def __getattr__(name: str):
    # `from pipeline.link import Linker` without importing torch and transformers for every submodule.
    if name == "Linker":
        from pipeline.link.linker import Linker

        return Linker
    raise AttributeError(name)
