"""Discontinuous mentions: a mention made of several fragments of its text.

Brat-style annotations (common in Russian and biomedical corpora) mark a mention such as
`чемпион Европы` over the text `чемпион мира и Европы` as two fragments. In a mentions
JSONL record such a mention gives

    "fragments": [[start, end], ...]

in the same offsets as its `start`/`end` (into `text`, or into the document with
`doc_start`/`doc_end`), end exclusive, ascending and not overlapping. `start`/`end` are the
covering span, from the first fragment's start to the last one's end (they may be left out
and are then taken from the fragments), and `mention` is the fragments' texts joined by one
space. The covering span is what the rest of the pipeline sees: the context is centred on
it, the mention vector pools its sub-words, and `gold.tab`/`system.tab` write it as the
mention's span (TAC KBP 2015 spans are contiguous).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.errors import InputError

FRAGMENTS_DTYPE = pl.List(pl.List(pl.Int64))
"""Fragments as kept in the mentions frame: [[start, end], ...] relative to the mention's start."""


def _bad(path: Path, line: int, record: dict[str, Any], detail: str) -> InputError:
    return InputError("E118", path=path, line=line, record_id=record.get("id"), detail=detail)


def read_fragments(path: Path, line: int, record: dict[str, Any]) -> list[list[int]] | None:
    """Check `record["fragments"]` and fill a missing covering span; fragments relative to its start.

    The covering span is `start`/`end` when the record has `text`, else `doc_start`/`doc_end`;
    missing ones are set (in `record`) from the first and last fragment. Returns None when the
    record has no fragments. Raises InputError E118 naming the file, line and fault.
    """
    fragments = record.get("fragments")
    if fragments is None:
        return None
    if not isinstance(fragments, list) or not fragments:
        raise _bad(path, line, record, f"expected a non-empty list of [start, end] pairs, got {fragments!r}")
    pairs: list[tuple[int, int]] = []
    for fragment in fragments:
        if (
            not isinstance(fragment, list)
            or len(fragment) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in fragment)
        ):
            raise _bad(path, line, record, f"fragment {fragment!r} is not a [start, end] pair of integers")
        start, end = fragment
        if start >= end:
            raise _bad(path, line, record, f"fragment {fragment!r} covers no character (end is exclusive)")
        if pairs and start < pairs[-1][1]:
            raise _bad(path, line, record, f"fragment {fragment!r} starts before the previous one ends")
        pairs.append((start, end))
    start_key, end_key = ("start", "end") if record.get("text") is not None else ("doc_start", "doc_end")
    if record.get(start_key) is None and record.get(end_key) is None:
        record[start_key], record[end_key] = pairs[0][0], pairs[-1][1]
    if (record.get(start_key), record.get(end_key)) != (pairs[0][0], pairs[-1][1]):
        raise _bad(
            path,
            line,
            record,
            f"they span {pairs[0][0]}-{pairs[-1][1]} but {start_key}/{end_key} say "
            f"{record.get(start_key)}-{record.get(end_key)}",
        )
    return [[s - pairs[0][0], e - pairs[0][0]] for s, e in pairs]


def fragment_texts(frame: pl.DataFrame) -> pl.DataFrame:
    """Add `fragment_text`: the fragments' texts in the context joined by one space (null without fragments).

    frame needs: line (unique), context, start (the covering span's start in the context),
    fragments (`FRAGMENTS_DTYPE`, relative to start).
    """
    parts = (
        frame.filter(pl.col("fragments").is_not_null())
        .select("line", "context", "start", "fragments")
        .explode("fragments")
        .with_columns(
            (pl.col("start") + pl.col("fragments").list.get(0)).alias("from"),
            (pl.col("fragments").list.get(1) - pl.col("fragments").list.get(0)).alias("length"),
        )
        .group_by("line", maintain_order=True)
        .agg(pl.col("context").str.slice(pl.col("from"), pl.col("length")).str.join(" ").alias("fragment_text"))
    )
    return frame.join(parts, on="line", how="left")
