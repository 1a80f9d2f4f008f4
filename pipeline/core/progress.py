"""Progress of long loops: a tqdm bar on a terminal, a log line every N seconds otherwise.

Every loop that shows progress (encode's texts, train's epochs, triage's KB records, name
keys, name index, fuzzy look-ups, candidate sources and dense name vectors, search's trials,
experiment's sub-runs) goes through `progress`. On a terminal
it is tqdm's bar. With stderr redirected to a file (a batch job, `2> log`), a bar either
prints nothing (tqdm's `disable=None`) or fills the log with carriage returns; there it
logs one line every `XEL_PROGRESS_SECONDS` (default 30) seconds instead:

    encode: 1,200/5,000 texts (24%), 41.3 texts/s, ETA 1 min 32 s

and a last line with the total rate when the loop ran longer than one interval.
Libraries' own bars (transformers' "Writing model shards", hub downloads) are switched
off by `silence_library_bars`: our log lines say the same once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

logger = logging.getLogger(__name__)

INTERVAL_VARIABLE = "XEL_PROGRESS_SECONDS"
DEFAULT_INTERVAL_SECONDS = 30.0

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether stderr (where bars and logs go) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def interval_seconds() -> float:
    """Seconds between log lines: `$XEL_PROGRESS_SECONDS` if it is a positive number, else 30."""
    try:
        value = float(os.environ.get(INTERVAL_VARIABLE, DEFAULT_INTERVAL_SECONDS))
    except ValueError:
        return DEFAULT_INTERVAL_SECONDS
    return value if value > 0 else DEFAULT_INTERVAL_SECONDS


def format_duration(seconds: float) -> str:
    """`45 s`, `3 min 05 s`, `2 h 07 min`: short enough for a log line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LogProgress:
    """tqdm's counting interface (`update`, `set_postfix`, `set_postfix_str`, `close`) as log lines.

    Logs at most one line per `interval` seconds of `clock` (monotonic seconds), from
    the first `update` after each interval; `close` logs the total when a line was due
    at least once. Rate and ETA count only what this process did (not `initial`, work
    resumed from an earlier run).
    """

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, log: logging.Logger = logger) -> None:  # fmt: skip
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval = interval_seconds() if interval is None else interval
        self.clock, self.log = clock, log
        self.started = self.last_logged = clock()
        self.start_n = initial
        self.postfix = ""
        self.logged_lines = 0
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_logged >= self.interval:
            self._log_line()

    def set_postfix(self, **values: object) -> None:
        self.postfix = " ".join(f"{key}={value}" for key, value in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = self.clock() - self.started
        if self.logged_lines or elapsed >= self.interval:
            done = self.n - self.start_n
            rate = done / elapsed if elapsed > 0 else 0.0
            count = f"{self.n:,}" + (f"/{self.total:,}" if self.total is not None else "")
            self.log.info("%s: %s %s in %s (%s %s/s)%s", self.desc, count, self.unit, format_duration(elapsed),
                          _rate(rate), self.unit, f"; {self.postfix}" if self.postfix else "")  # fmt: skip

    def line(self) -> str:
        """The progress line as it would be logged now."""
        now = self.clock()
        elapsed = now - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n:,}" + (f"/{self.total:,}" if self.total is not None else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_rate(rate)} {self.unit}/s")
        if self.total is not None and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        text = ", ".join(parts)
        return f"{text}; {self.postfix}" if self.postfix else text

    def _log_line(self) -> None:
        self.log.info("%s", self.line())
        self.last_logged = self.clock()
        self.logged_lines += 1

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str, initial: int = 0, enabled: bool = True, delay: float = 0.0):
    """A progress counter for a loop of `total` `unit`s: tqdm on a terminal, `LogProgress` elsewhere.

    Use as tqdm: `with progress(n, "encode", "texts") as bar: ... bar.update(k)`.
    `enabled=False` (e.g. ranks other than 0 under torchrun) gives a counter that shows
    nothing. `delay`: seconds before a bar shows at all (tqdm's `delay`), for loops that are
    mostly short (a link chunk's triage) but can be long (a whole KB's); log lines come only
    after an interval anyway.
    """
    if enabled and on_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=False, dynamic_ncols=True, delay=delay)
    return LogProgress(total, desc, unit, initial=initial, interval=None if enabled else float("inf"))


def track(items: Iterable[T], desc: str, unit: str, total: int | None = None, postfix: Callable[[T], str] | None = None
          ) -> Iterator[T]:  # fmt: skip
    """Yield `items`, counting each one after the loop body has run for it.

    `postfix(item)` labels the item being worked on (tqdm's postfix; appended to log lines).
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc, unit) as counter:
        for item in items:
            if postfix is not None:
                counter.set_postfix_str(postfix(item))
            yield item
            counter.update(1)


def silence_library_bars() -> None:
    """Switch off transformers' and the Hugging Face hub's own tqdm bars.

    They would write carriage-return bars into a redirected log (the offline encoder
    build's "Writing model shards"), and on a terminal they add nothing to our own lines.
    """
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # an old or absent hub: nothing of ours uses its bars
        return
    disable_progress_bars()


def _rate(rate: float) -> str:
    return f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"
