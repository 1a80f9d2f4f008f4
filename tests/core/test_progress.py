"""Progress lines (`pipeline.core.progress`): tqdm on a terminal, timed log lines otherwise."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from conftest import write_run_config
from pipeline.core import progress as progress_module
from pipeline.core.progress import LogProgress, format_duration, interval_seconds, progress, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_come_once_per_interval_with_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="pipeline.core.progress")
    counter = LogProgress(1000, "encode", "texts", initial=200, interval=30, clock=clock)
    clock.now += 10
    counter.update(100)  # 10 s < 30 s: no line yet
    assert caplog.messages == []
    clock.now += 20
    counter.set_postfix(loss="0.4100")
    counter.update(200)  # 30 s: 300 texts done here (the 200 resumed ones do not count): 10/s
    assert caplog.messages == ["encode: 500/1,000 texts (50%), 10.0 texts/s, ETA 50 s; loss=0.4100"]
    clock.now += 5
    counter.update(100)  # 5 s after the last line: none
    assert len(caplog.messages) == 1
    clock.now += 25
    counter.set_postfix_str("")
    counter.update(300)  # 60 s, 700 done: 11.7/s, 100 left: 8.6 s
    assert caplog.messages[-1] == "encode: 900/1,000 texts (90%), 11.7 texts/s, ETA 9 s"
    counter.close()
    assert caplog.messages[-1] == "encode: 900/1,000 texts in 1 min 00 s (11.7 texts/s)"
    counter.close()  # closing twice logs once
    assert len(caplog.messages) == 3


def test_a_short_loop_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="pipeline.core.progress")
    with LogProgress(5, "train", "epochs", interval=30, clock=clock) as counter:
        for _ in range(5):
            clock.now += 1
            counter.update(1)
    assert caplog.messages == []


def test_a_long_loop_ends_with_its_total(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="pipeline.core.progress")
    with LogProgress(None, "search", "trials", interval=30, clock=clock) as counter:
        clock.now += 45
        counter.update(3)
    # Without a total: no percentage and no ETA.
    assert caplog.messages == ["search: 3 trials, 0.1 trials/s", "search: 3 trials in 45 s (0.1 trials/s)"]


def test_terminal_gets_tqdm_and_a_redirected_stream_gets_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm.auto import tqdm

    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    bar = progress(10, "encode", "texts")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    assert isinstance(progress(10, "encode", "texts"), LogProgress)
    # A disabled counter (ranks other than 0) never logs, on a terminal or not.
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    silent = progress(10, "train", "epochs", enabled=False)
    assert isinstance(silent, LogProgress) and silent.interval == float("inf")


def test_track_yields_every_item_and_labels_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    monkeypatch.setenv("XEL_PROGRESS_SECONDS", "1e-9")
    caplog.set_level(logging.INFO, logger="pipeline.core.progress")
    assert list(track(["a", "b"], "experiment", "sub-runs", postfix=lambda item: f"model {item}")) == ["a", "b"]
    assert caplog.messages[0].startswith("experiment: 1/2 sub-runs (50%), ")
    assert caplog.messages[0].endswith("; model a")
    assert caplog.messages[-1].startswith("experiment: 2/2 sub-runs in 0 s")


@pytest.mark.parametrize(("value", "expected"), [("5", 5.0), ("0.5", 0.5), ("0", 30.0), ("-2", 30.0), ("soon", 30.0)])
def test_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, expected: float) -> None:
    monkeypatch.setenv("XEL_PROGRESS_SECONDS", value)
    assert interval_seconds() == expected


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 3600, 7620)] == [
        "0 s",
        "59 s",
        "1 min 01 s",
        "59 min 59 s",
        "1 h 00 min",
        "2 h 07 min",
    ]


def test_a_redirected_run_logs_encode_and_train_progress(
    tmp_path: Path, tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CliRunner's stderr is not a terminal, as with `xel-cli run ... 2> log`.
    monkeypatch.setenv("XEL_PROGRESS_SECONDS", "1e-9")
    config = write_run_config(tmp_path, tiny_encoder_dir)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    encode_lines = re.findall(
        r"^INFO pipeline\.core\.progress: encode: (\d+)/(\d+) texts.*texts/s", result.stderr, re.M
    )
    assert encode_lines and encode_lines[-1][0] == encode_lines[-1][1]
    train_lines = re.findall(r"^INFO pipeline\.core\.progress: train: (\d+)/6 epochs \(\d+%\), .* epochs/s, ETA",
                             result.stderr, re.M)  # fmt: skip
    assert [int(done) for done in train_lines] == [1, 2, 3, 4, 5, 6]
    assert re.search(r"^INFO pipeline\.core\.progress: train: 6/6 epochs in \d+ s .*; loss=", result.stderr, re.M)


def test_triage_reports_progress_on_its_long_steps(
    tmp_path: Path, tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triage logs progress while it reads the KB, keys and indexes its names, looks up fuzzy matches
    and runs each candidate source (issue 21 item 16: a new user saw 56 s of silence)."""
    monkeypatch.setenv("XEL_PROGRESS_SECONDS", "1e-9")
    monkeypatch.setenv("XEL_CACHE", str(tmp_path / "cache"))  # the KB's indexes are built, not found cached
    config = write_run_config(tmp_path, tiny_encoder_dir)
    result = CliRunner().invoke(main, ["triage", "--config", str(config)])
    assert result.exit_code == 0, result.output
    steps = re.findall(r"^INFO pipeline\.core\.progress: (triage: [a-zA-Z -]+): ", result.stderr, re.M)
    assert {
        "triage: KB",
        "triage: name keys",
        "triage: name index",
        "triage: fuzzy look-ups",
        "triage: candidate sources",
    } <= set(steps), steps
    sources = re.findall(
        r"^INFO pipeline\.core\.progress: triage: candidate sources: (\d)/4 sources \(.*; (.+)$", result.stderr, re.M
    )
    assert sources == [("1", "priors"), ("2", "KB names"), ("3", "fuzzy"), ("4", "dense")], result.stderr
