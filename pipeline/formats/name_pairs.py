"""§7.1 name-pairs files (a foreign name and its English name, optionally a language) for the
name-matching auxiliary loss: read and checked with the file and line of a bad record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.errors import InputError
from pipeline.core.io import check_record_fields, iter_jsonl_blocks
from pipeline.core.languages import LANGUAGE_TAG_EXPECTED, is_language_tag, normalise_language

NAME_PAIR_FIELDS: dict[str, tuple[Any, bool]] = {"foreign": (str, True), "english": (str, True), "lang": (str, False)}
NAME_PAIR_HEADER = ("foreign", "english", "lang")


def _tsv_name_pairs(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, columns) of each non-blank line of a tab-separated pairs file; a header line is skipped."""
    rows: list[tuple[int, list[str]]] = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise InputError(
                    "E110", path=path, line=line_number, detail=f"{exc.reason} at byte {exc.start}"
                ) from None
            if not text.strip():
                continue
            columns = [column.strip() for column in text.split("\t")]
            if not rows and tuple(c.lower() for c in columns) == NAME_PAIR_HEADER[: len(columns)] and len(columns) >= 2:
                continue  # the optional header: foreign, english[, lang]
            rows.append((line_number, columns))
    return rows


def read_name_pairs(path: Path) -> pl.DataFrame:
    """A §7.1 name-pairs file -> DataFrame(line, foreign, english, lang) in file order.

    `.tsv`/`.txt`: foreign name, English name and optionally a language, tab-separated, one
    pair a line, an optional header `foreign<TAB>english[<TAB>lang]`. `.jsonl`: one
    `{"foreign", "english", "lang"?}` object a line. UTF-8 (a BOM and CRLF are fine), blank
    lines skipped, names stripped, a language read as its primary subtag (`pipeline.core.languages`). A bad line is an InputError naming the file and line.
    """
    if not path.is_file():
        raise InputError("E108", path=path)
    columns: dict[str, list] = {"line": [], "foreign": [], "english": [], "lang": []}
    if path.suffix.lower() == ".jsonl":
        records = []
        for block in iter_jsonl_blocks(path):
            for line, record in block:
                check_record_fields(path, line, record, NAME_PAIR_FIELDS)
                records.append((line, [record["foreign"].strip(), record["english"].strip(), record.get("lang")]))
    else:
        records = _tsv_name_pairs(path)
    for line, values in records:
        if not 2 <= len(values) <= 3:
            raise InputError(
                "E113", path=path, line=line, detail=f"expected 2 or 3 tab-separated columns, got {len(values)}"
            )
        foreign, english = values[0], values[1]
        lang = values[2] if len(values) == 3 and isinstance(values[2], str) and values[2].strip() else None
        if lang is not None and not is_language_tag(lang):
            raise InputError(
                "E113", path=path, line=line, detail=f"the language {lang!r} should be {LANGUAGE_TAG_EXPECTED}"
            )
        if not foreign or not english:
            raise InputError(
                "E113", path=path, line=line, detail=f"the {'foreign' if not foreign else 'English'} name is empty"
            )
        columns["line"].append(line)
        columns["foreign"].append(foreign)
        columns["english"].append(english)
        columns["lang"].append(normalise_language(lang) if lang is not None else None)
    if not columns["line"]:
        raise InputError("E107", path=path)
    return pl.DataFrame(
        columns, schema={"line": pl.Int64, "foreign": pl.String, "english": pl.String, "lang": pl.String}
    )
