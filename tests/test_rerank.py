"""The reader (rerank stage, docs/reader.md): stage contract, learning, NIL option, resume, evaluate's use."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main

TINY_RERANK = {"enabled": True, "top_k": 3, "max_seq_tokens": 96, "max_context_tokens": 32, "epochs": 2,
               "batch_mentions": 4, "learning_rate": 1e-3, "nil_hidden_share": 0.2}


def test_run_with_the_reader_end_to_end(make_run_config) -> None:
    config = make_run_config(rerank=dict(TINY_RERANK))
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    print(result.output)


def test_evaluate_offers_the_reader(make_run_config) -> None:
    import json

    config = make_run_config(rerank=dict(TINY_RERANK))
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run_dir = Path(config).parent / "run"
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    print(result.output[-3000:])
    print((run_dir / "evaluate" / "report.md").read_text()[:4000])
