"""TAC KBP 2015 EDL `.tab` files: read, write, and the language of a TAC document id.

A `.tab` file has one mention a line, tab-separated, no header:

    run_id  mention_id  mention  doc_id:start-end  kb_id  entity_type  mention_type  confidence

`end` is INCLUSIVE (a one-character mention at offset 7 is `DOC:7-7`). `doc_id` may itself
contain ':' (e.g. `meantime:en:1007169`); the span is split on the LAST ':' that is
followed by `start-end`, exactly as neleval's `prepare-tac15` does (its `KEY_RE`, which also
allows one optional space after the ':' and around the '-', and an en dash). `kb_id`
starting with "NIL" marks an unlinked mention (NIL cluster id). Some files leave out the
confidence column; such a file must leave it out on every line, and reads as 1.0 (the
TAC convention neleval's older TAC reader uses). The official TAC 2015 layout may add three
more columns after the confidence (web search, wiki text, and one unnamed); neleval's
`prepare-tac15` reads such 11-column files and ignores the three, and so do we.

Reading is vectorised: the file is split into lines once and every check runs as a polars
expression over all lines; the first bad line is reported as one `InputError` naming the
file, the line, what is wrong and what to do.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import polars as pl

from pipeline.core import languages
from pipeline.core.errors import InputError, SchemaError
from pipeline.core.io import atomic_path

logger = logging.getLogger(__name__)

TAB_COLUMNS = (
    "run_id",
    "mention_id",
    "mention",
    "span",
    "kb_id",
    "entity_type",
    "mention_type",
    "confidence",
)
"""The eight columns of a TAC KBP 2015 EDL line, in file order (`span` = doc_id:start-end)."""

EXTRA_COLUMNS = 3
"""Columns the 11-column TAC 2015 layout adds after the confidence (web search, wiki text,
unknown): read and ignored, as neleval's `prepare-tac15` does."""

FRAME_SCHEMA = {
    "run_id": pl.String,
    "mention_id": pl.String,
    "mention": pl.String,
    "doc_id": pl.String,
    "start": pl.Int64,
    "end": pl.Int64,
    "kb_id": pl.String,
    "entity_type": pl.String,
    "mention_type": pl.String,
    "confidence": pl.Float64,
}
"""Columns and dtypes `read_tab` returns and `write_tab` needs (`end` inclusive)."""

# neleval 3.1.1 tac.PrepareTac15.KEY_RE, with ASCII digits so that every match casts to Int64.
SPAN_PATTERN = r"^(\S+): ?([0-9]+) ?[-\u2013] ?([0-9]+)$"
_OFFSETS_PATTERN = r"^ ?([0-9]+) ?[-\u2013] ?([0-9]+)$"  # SPAN_PATTERN's part after the last ':'

DEFAULT_CONFIDENCE = 1.0  # files without the confidence column: TAC's (and neleval's) default

TAC_LANGUAGE_PREFIXES = {"ENG": "en", "CMN": "zh", "SPA": "es"}
"""TAC KBP source-document id prefixes and the language each one means."""

# `<corpus>:<lang>:rest`, lang a language tag as every reader takes one (`pipeline.core.languages`:
# `meantime:en:1007169`, `mycorp:en-US:doc1`, `mycorp:PT_br:7`), read as its primary subtag (en, pt).
CORPUS_LANGUAGE_PATTERN = r"^[^:]+:([^:]*):"
_CORPUS_LANGUAGE_RE = re.compile(CORPUS_LANGUAGE_PATTERN)

_FIX_COLUMNS = (
    "check for stray or missing tabs; a line is run_id, mention_id, mention, "
    "doc_id:start-end, kb_id, entity_type, mention_type[, confidence[, three ignored columns]]"
)
_SHOWN_VALUE_CHARS = 60


def language_of_doc(doc_id: str) -> str | None:
    """Language code of a document id, or None when the id does not say.

    TAC ids starting ENG/CMN/SPA give en/zh/es; ids of the form `<corpus>:<lang>:...`
    (lang a language tag, e.g. `meantime:nl:1007169`, `mycorp:en-US:doc1`) give its primary
    language subtag, lower-cased (`nl`, `en`), as `lang` fields are read; a second field that
    is no tag (`doc:17:x`) says nothing. The rule is the same as `language_expr`, which
    applies it to a whole column.
    """
    for prefix, language in TAC_LANGUAGE_PREFIXES.items():
        if doc_id.startswith(prefix):
            return language
    match = _CORPUS_LANGUAGE_RE.match(doc_id)
    return languages.normalise_language(match.group(1)) if match and languages.is_language_tag(match.group(1)) else None


def language_expr(doc_id: pl.Expr) -> pl.Expr:
    """`language_of_doc` as a polars expression over a String column (null where unknown)."""
    field = doc_id.str.extract(CORPUS_LANGUAGE_PATTERN, 1)
    language = pl.when(languages.is_language_tag_expr(field)).then(languages.language_expr(field))
    for prefix, code in reversed(TAC_LANGUAGE_PREFIXES.items()):
        language = pl.when(doc_id.str.starts_with(prefix)).then(pl.lit(code)).otherwise(language)
    return language


def _tab_lines(path: Path) -> pl.Series:
    """The lines of a `.tab` file (BOM, CRLF and one final newline dropped); E108, E110, E107 as `read_tab`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("E108", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise InputError("E110", path=path, line=line, detail=error.reason) from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")  # a no-op scan without CRLF
    lines = pl.Series("line", [text.removesuffix("\r")]).str.split("\n").explode()
    if lines[-1] == "":
        lines = lines.head(-1)  # the file's final newline
    if lines.is_empty() or (lines.len() == 1 and not lines[0].strip()):
        raise InputError("E107", path=path)
    return lines


def _parse_lines(lines: pl.Series, has_confidence: bool) -> pl.DataFrame:
    """One row per line: its number, column count, the seven columns, the confidence, and the span
    parsed (`span_ok`, doc_id, start, end; null where malformed), for `read_tab` to check."""
    field = pl.col("fields").list
    # The span regex only validates (a DFA match, fast); offsets come from the short text
    # after the last ':' (the only ':' the pattern can split on, since no ':' may follow it).
    offsets_text = pl.col("span").str.split(":").list.last()
    return (
        lines.to_frame()
        .lazy()
        .with_row_index("line_number", offset=1)
        .with_columns(pl.col("line").str.split("\t").alias("fields"))
        .with_columns(
            field.len().alias("n_columns"),
            *(field.get(i, null_on_oob=True).alias(name) for i, name in enumerate(TAB_COLUMNS[:7])),
            (field.get(7, null_on_oob=True) if has_confidence else pl.lit(None, pl.String)).alias("confidence_text"),
        )
        .with_columns(
            pl.col("span").str.contains(SPAN_PATTERN).fill_null(False).alias("span_ok"),
            offsets_text.alias("offsets_text"),
            pl.col("confidence_text").str.strip_chars().cast(pl.Float64, strict=False).alias("confidence"),
        )
        .with_columns(
            pl.col("span")
            .str.head(pl.col("span").str.len_chars() - pl.col("offsets_text").str.len_chars() - 1)
            .alias("doc_id"),
            pl.col("offsets_text").str.extract_groups(_OFFSETS_PATTERN).alias("offsets"),
        )
        .with_columns(
            pl.col("offsets").struct.field("1").cast(pl.Int64, strict=False).alias("start"),
            pl.col("offsets").struct.field("2").cast(pl.Int64, strict=False).alias("end"),
        )
        .drop("line", "fields", "offsets")
        .collect()
    )


def read_tab(path: Path) -> pl.DataFrame:
    """Read a TAC KBP 2015 EDL `.tab` file into a frame with `FRAME_SCHEMA` columns.

    Rows keep file order (duplicate spans are kept; scoring resolves them). Spans are
    accepted in neleval's forms (`DOC:12-15`, also `DOC: 12 - 15` and an en dash). A
    UTF-8 BOM and CRLF line ends are accepted; one trailing newline is optional. Raises
    `InputError` E108 (missing file), E107 (no records), E110 (not UTF-8) or E112 (first
    malformed line: wrong column count (7, 8 or 11, as on line 1; columns 9-11 are ignored), a span that is not `doc_id:start-end`, offsets
    that overflow, end before start, a non-numeric or non-finite confidence, an empty KB
    id), each naming the file and line.
    """
    path = Path(path)
    lines = _tab_lines(path)
    # Line 1 decides the layout (7 columns: no confidence; 8; or 11: three ignored extras);
    # every line must agree.
    first_width = lines[0].count("\t") + 1
    width = first_width if first_width in (len(TAB_COLUMNS) - 1, len(TAB_COLUMNS) + EXTRA_COLUMNS) else len(TAB_COLUMNS)
    has_confidence = width != len(TAB_COLUMNS) - 1

    parsed = _parse_lines(lines, has_confidence)
    offsets_ok = pl.col("start").is_not_null() & pl.col("end").is_not_null()
    confidence_ok = pl.lit(not has_confidence) | (pl.col("confidence").is_not_null() & pl.col("confidence").is_finite())
    line_ok = (
        (pl.col("n_columns") == width)
        & pl.col("span_ok")
        & offsets_ok
        & (pl.col("end") >= pl.col("start"))
        & (pl.col("kb_id") != "")
        & confidence_ok
    )
    bad = parsed.filter(~line_ok.fill_null(False))
    if bad.height:
        first = bad.row(0, named=True)
        more = f" ({bad.height - 1} more bad line(s) after it)" if bad.height > 1 else ""
        raise InputError("E112", path=path, line=first["line_number"], detail=_problem(first, width) + more)

    frame = parsed.select(
        *(pl.col(name) for name in ("run_id", "mention_id", "mention", "doc_id", "start", "end")),
        "kb_id",
        "entity_type",
        "mention_type",
        pl.col("confidence").fill_null(DEFAULT_CONFIDENCE) if not has_confidence else pl.col("confidence"),
    )
    logger.info(
        "read %d mentions from %s%s", frame.height, path, "" if has_confidence else " (no confidence column: 1.0)"
    )
    return frame.cast(FRAME_SCHEMA)  # type: ignore[arg-type]


def _problem(line: dict, width: int) -> str:
    """What is wrong with one parsed line (a row of `read_tab`'s work frame) and the fix."""

    def shown(value: object) -> str:
        return repr(str(value)[:_SHOWN_VALUE_CHARS])

    if line["n_columns"] != width:
        like = " (as on line 1)" if line["line_number"] > 1 else ""
        return f"has {line['n_columns']} tab-separated columns, expected {width}{like}; " + _FIX_COLUMNS
    if not line["span_ok"]:
        return (
            f"span {shown(line['span'])} is not doc_id:start-end; write it as DOC_ID:START-END with "
            "character offsets and END inclusive, e.g. ENG_NW_001:12-15"
        )
    if line["start"] is None or line["end"] is None:
        return f"offsets in span {shown(line['span'])} are too large for 64-bit integers; fix them"
    if line["end"] < line["start"]:
        return (
            f"span {shown(line['span'])} ends before it starts; END is inclusive, so a one-character "
            "mention at offset S is S-S"
        )
    if line["kb_id"] == "":
        return "KB id (column 5) is empty; write NIL (or NIL<cluster id>) for an unlinked mention"
    return (
        f"confidence {shown(line['confidence_text'])} (column 8) is not a finite number; write a decimal such as 0.85"
    )


def format_confidence(confidence: pl.Series) -> pl.Series:
    """Python `repr` of each float (the shortest string that reads back to the same value).

    `float.__repr__` is mapped in C over the column (no Python-level loop body); polars'
    own float-to-string cast is also round-trip exact but switches to exponent notation
    at different magnitudes than Python does.
    """
    return pl.Series(confidence.name, list(map(float.__repr__, confidence.to_list())), dtype=pl.String)


def _checked_frame(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """`frame` as `FRAME_SCHEMA` columns, or E602 (missing columns), E603 (nulls) or E605 (a tab or line
    break in a text field) naming `path`, the file it was to be written to."""
    missing = [name for name in FRAME_SCHEMA if name not in frame.columns]
    if missing:
        raise SchemaError(
            "E602",
            what=f"frame for {path}",
            missing=", ".join(missing),
            columns=", ".join(frame.columns),
            fix="build it with pipeline.formats.tac.read_tab's columns",
        )
    frame = frame.select(list(FRAME_SCHEMA)).cast(FRAME_SCHEMA)  # type: ignore[arg-type]
    null_counts = frame.null_count().row(0, named=True)
    for name, count in null_counts.items():
        if count:
            row = int(frame.with_row_index("row").filter(pl.col(name).is_null())["row"][0])
            raise SchemaError("E603", what=f"frame for {path}", column=name, count=count, row=row)
    text_columns = [name for name, dtype in FRAME_SCHEMA.items() if dtype == pl.String]
    unsafe = frame.with_row_index("row").select(
        "row", *(pl.col(name).str.contains(r"[\t\r\n]").alias(name) for name in text_columns)
    )
    for name in text_columns:
        rows = unsafe.filter(pl.col(name))["row"]
        if rows.len():
            raise SchemaError(
                "E605",
                path=path,
                column=name,
                row=int(rows[0]),
                detail="it contains a tab or line break, which would split the line; replace it with a space",
            )
    return frame


def write_tab(frame: pl.DataFrame, path: Path) -> None:
    """Write `frame` (columns of `FRAME_SCHEMA`) as a TAC KBP 2015 EDL `.tab` file.

    `end` is written as given (inclusive). Confidence is written with `repr`, so reading
    the file back gives bit-identical floats. The file is written to a temporary file in
    the same folder and moved into place (`pipeline.core.io.atomic_path`), so readers never
    see a half-written file; a failed write is E406. Raises `SchemaError` E602 for
    missing columns and E603 for nulls, and E605 when a text field holds a tab or line
    break (the line would not read back).
    """
    path = Path(path)
    frame = _checked_frame(frame, path)
    lines = frame.with_columns(format_confidence(frame["confidence"]).alias("confidence_text")).select(
        pl.concat_str(
            [
                pl.col("run_id"),
                pl.col("mention_id"),
                pl.col("mention"),
                pl.format("{}:{}-{}", pl.col("doc_id"), pl.col("start"), pl.col("end")),
                pl.col("kb_id"),
                pl.col("entity_type"),
                pl.col("mention_type"),
                pl.col("confidence_text"),
            ],
            separator="\t",
        ).alias("line")
    )["line"]
    payload = "\n".join(lines.to_list()) + ("\n" if lines.len() else "")

    with atomic_path(path) as temp_path:
        with open(temp_path, "w", encoding="utf-8", newline="") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    logger.info("wrote %d mentions to %s", frame.height, path)
