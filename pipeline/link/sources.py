"""Mentions to link, read chunk by chunk from JSONL, Parquet or a TAC KBP 2015 `.tab` file.

Every chunk goes through the stages' readers (`pipeline.formats.inputs`), so the same checks
name the same file and line. Chunks are cut by position (the i-th `chunk_mentions`
records), never by content, so a resumed or sharded run cuts the same chunks. Gold ids
and splits in the input are dropped unless scoring is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.errors import InputError
from pipeline.core.io import iter_jsonl_blocks
from pipeline.formats.inputs import (
    MENTION_FIELDS,
    GivenRecords,
    given_gold,
    normalise_gold,
    read_mentions_jsonl,
    read_tac_lines,
    tac_mentions,
    write_docs,
)
from pipeline.link.repeats import NO_AMENDMENTS, Amendments, Repeats

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TAB_SUFFIXES = (".tab", ".tsv")
Chunk = tuple[int, Callable[[], pl.DataFrame]]
GOLD_SCAN_LINES = 1_000  # `has_gold` reads this many JSONL lines at a time


def mention_format(path: Path) -> str:
    """ "jsonl", "parquet" or "tac" from the file name; E707 otherwise."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix in TAB_SUFFIXES:
        return "tac"
    raise InputError("E707", path=path)


def has_gold(path: Path) -> bool:
    """Whether any mention of `path` carries a gold id (`gold_kb_id`, not blank): what `--score` needs.

    Read before linking, so a corpus without gold fails at once (E709) rather than after
    linking all of it. Stops at the first mention with gold; only a corpus without any is
    read to the end. A TAC `.tab` always has gold (its KB column; a line without is E112).
    """
    kind = mention_format(path)
    if kind == "tac":
        return True
    if kind == "parquet":
        scan = pl.scan_parquet(path)
        if "gold_kb_id" not in parquet_columns(path):
            return False
        gold = scan.with_columns(pl.col("gold_kb_id").cast(pl.String)).select(given_gold().is_not_null().any())
        return bool(gold.collect().item())
    return any(
        _is_gold(record.get("gold_kb_id"))
        for block in iter_jsonl_blocks(path, block_lines=GOLD_SCAN_LINES)
        for _, record in block
    )


def _is_gold(value: object) -> bool:
    """Whether a record's gold_kb_id is a gold id: given, and not empty or only whitespace
    (`inputs.given_gold` for one record, as the JSONL scan streams records, not a frame)."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def parquet_columns(path: Path) -> list[str]:
    """The column names of a mentions Parquet file; E119 when it is not one polars can read
    (garbage, truncated, empty), rather than a polars traceback."""
    try:
        return pl.scan_parquet(path).collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise InputError(
            "E119",
            path=path,
            kind="Parquet",
            detail=" ".join(str(error).split())[:160],
            fix="write it again (polars or pyarrow), or give the mentions as JSONL",
        ) from None


# The mention fields that hold integers (offsets): pandas stores an integer column with a missing value as floats.
_INTEGER_FIELDS = frozenset(name for name, (types, _) in MENTION_FIELDS.items() if types is int)


def native_records(table: object, name: str = "<mentions>") -> list[dict]:
    """Mention (or document) records as plain Python values, from what a Python caller may hold.

    `table`: a polars DataFrame, a pandas DataFrame (or any object with `to_dict("records")`), a
    pyarrow Table or RecordBatch (`to_pylist`), or an iterable of mappings. Values are made native
    (`native_value`): numpy scalars and arrays, pandas' missing values (NaN, NA, NaT) as None, and
    an integral float in an offset field (`start`, `end`, `doc_start`, `doc_end`; pandas turns an
    integer column with a missing value into floats) as an int. pandas itself is never imported.
    A row that is no mapping is E101, naming `name` and the row (from 1) as a JSONL file's line.
    """
    if isinstance(table, (Mapping, str, bytes)):  # iterating it would give its keys or characters as "records"
        raise InputError(
            "E101",
            path=name,
            line=1,
            detail=f"expected a list (or DataFrame) of records, got one "
            f"{type(table).__name__}; pass [record] for a single mention",
        )
    if isinstance(table, pl.DataFrame):
        rows = table.to_dicts()
    elif hasattr(table, "to_pylist"):  # pyarrow Table / RecordBatch
        rows = table.to_pylist()
    elif hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas DataFrame
        rows = table.to_dict("records")
    else:
        rows = list(table)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):  # as a JSONL line that holds no object
            raise InputError("E101", path=name, line=number, detail=f"expected an object, got {type(row).__name__}")
    return [{str(key): native_value(value, str(key) in _INTEGER_FIELDS) for key, value in row.items()} for row in rows]


def native_value(value: object, integral: bool = False) -> object:
    """`value` as JSON would give it: numpy scalars (np.int64, np.bool_, np.str_ ...) as Python's, arrays
    and tuples as lists, NaN and pandas' NA/NaT as None; with `integral`, a float with no fraction as an
    int (a fractional one stays, for the reader's E103)."""
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values, without importing pandas
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [native_value(item, integral=True) for item in value]  # a fragment list holds offsets
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if integral and value.is_integer():
            return int(value)
    return value


def records_frame(
    records: list[dict], path: Path, context_chars: int, keep_gold: bool, docs: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Mention records (JSONL fields) -> the `schema.MENTIONS` table, checked as a JSONL file's lines are
    (record i as line i, from 1; the records are compared with each other too, as one file's lines).

    `docs` (doc_id, doc_text) serves mentions given by doc_start/doc_end (named `<docs>` in errors);
    without `keep_gold`, gold_kb_id and split are ignored.
    """
    docs_name = Path("<docs>") if docs is not None else None
    return _block_frame(path, list(enumerate(records, start=1)), context_chars, keep_gold, docs, docs_name, True)


def _block_frame(
    path: Path,
    block: list[tuple[int, dict]],
    context_chars: int,
    keep_gold: bool,
    docs: pl.DataFrame | None,
    docs_path: Path | None,
    across_records: bool,
) -> pl.DataFrame:
    """(line, record) pairs -> the `schema.MENTIONS` table through the stages' JSONL reader, gold
    ids and splits dropped unless `keep_gold`: what every chunk reader and `records_frame` share."""
    if not keep_gold:
        block = [
            (line, {k: v for k, v in record.items() if k not in ("gold_kb_id", "split")}) for line, record in block
        ]
    given = GivenRecords([block] if block else [], docs, across_records)
    frame = read_mentions_jsonl(path, docs_path, context_chars, given=given)
    return normalise_gold(frame)


def _chunk_docs(docs_parquet: Path | None, records: list[dict]) -> pl.DataFrame | None:
    """The documents a chunk's records point to, read from the corpus's docs Parquet."""
    if docs_parquet is None:
        return None
    wanted = pl.Series([r.get("doc_id") for r in records], dtype=pl.String).unique().implode()
    return pl.scan_parquet(docs_parquet).filter(pl.col("doc_id").is_in(wanted)).collect()


def mention_chunks(
    path: Path, docs: Path | None, chunk_mentions: int, context_chars: int, keep_gold: bool, work_dir: Path
) -> Iterator[Chunk]:
    """Yield (chunk index, read) for each chunk; `read()` parses and checks that chunk only.

    JSONL and Parquet mentions may point into a docs JSONL (`docs`), which is streamed
    once into `work_dir/docs.parquet`; a TAC `.tab` needs `docs`, the source folder.
    """
    if not path.exists():
        raise InputError("E108", path=path)
    kind = mention_format(path)
    if kind == "tac":
        if docs is None or not docs.is_dir():
            raise InputError("E708", path=path, docs="no --docs" if docs is None else f"{docs}, not a folder")
        lines = read_tac_lines({"test": path})  # once: a chunk takes its slice of these lines

        def tac_chunk(offset: int) -> pl.DataFrame:
            frame = tac_mentions(lines.slice(offset, chunk_mentions), docs, context_chars, across_records=False)
            frame = frame if keep_gold else frame.with_columns(pl.lit(None, pl.String).alias("gold_kb_id"))
            return normalise_gold(frame)

        for index, offset in enumerate(range(0, lines.height, chunk_mentions)):
            yield index, (lambda offset=offset: tac_chunk(offset))
        return
    docs_parquet = None
    if docs is not None:
        docs_parquet = work_dir / "docs.parquet"
        if not docs_parquet.is_file():
            write_docs(docs, docs_parquet)
    if kind == "jsonl":
        for index, block in enumerate(iter_jsonl_blocks(path, block_lines=chunk_mentions)):
            yield index, (lambda block=block: _records_chunk(path, block, docs, docs_parquet, context_chars, keep_gold))
        return
    parquet_columns(path)  # a file polars cannot read is E119 here, before any chunk
    total = pl.scan_parquet(path).select(pl.len()).collect().item()
    for index, offset in enumerate(range(0, total, chunk_mentions)):

        def parquet_chunk(offset: int = offset) -> pl.DataFrame:
            records = native_records(pl.scan_parquet(path).slice(offset, chunk_mentions).collect())
            block = list(enumerate(records, start=offset + 1))  # a row's line: its place in the file, from 1
            return _records_chunk(path, block, docs, docs_parquet, context_chars, keep_gold)

        yield index, parquet_chunk


# What the corpus-wide checks need of each mention: a few short columns, kept for every chunk.
KEY_COLUMNS = (
    "line",
    "mention_id",
    "doc_id",
    "lang",
    "start",
    "end",
    "doc_start",
    "doc_end",
    "gold_kb_id",
    "text_hash",
)


def check_corpus(chunks: Iterator[Chunk], path: Path, repeats: Repeats = Repeats()) -> tuple[int, Amendments]:
    """The input checks that span chunks, made on the whole corpus before any chunk is linked;
    returns the number of chunks and what each chunk amends (`repeats.Amendments`: none unless
    `repeats` asks to rename repeated ids or drop repeated spans).

    Each chunk is read (and so checked on its own) and only its `KEY_COLUMNS` are kept, so
    the memory this takes grows with the mention count, not with the texts. Across chunks: a mention id
    given twice (E104), one document given two languages (E117) or two texts (E120, by the
    readers' `text_hash`) and two mentions of one span (E115), with the same messages as in one chunk, so whether a corpus is accepted
    never depends on `--chunk-mentions` or `--shard`.
    """
    from pipeline.formats.input_checks import check_document_texts, check_documents
    from pipeline.formats.inputs import check_unique_ids

    keys = []
    for _, read in chunks:
        keys.append(read().select(KEY_COLUMNS))
    amendments = NO_AMENDMENTS
    if keys:  # one chunk too: not every reader checks ids on its own (a TAC file's query ids)
        table = pl.concat(keys).rename({"mention_id": "id"})
        end_inclusive = mention_format(path) == "tac"  # spans as the file writes them
        if repeats.rename_ids or repeats.drop_spans:
            table, amendments = repeats.amend(table, path, end_inclusive)
        check_unique_ids(table["id"], table["line"], path, "mention", renamed=repeats.rename_ids)
        check_documents(table, path, end_inclusive=end_inclusive)
        check_document_texts(table, path)
    return len(keys), amendments


def _records_chunk(
    path: Path,
    block: list[tuple[int, dict]],
    docs_path: Path | None,
    docs_parquet: Path | None,
    context_chars: int,
    keep_gold: bool,
) -> pl.DataFrame:
    """A chunk of (line, record) pairs with its documents, read from the corpus's docs Parquet; a JSONL
    chunk keeps its block's own line numbers (blank lines are skipped, so they need not be consecutive)."""
    docs = _chunk_docs(docs_parquet, [record for _, record in block])
    return _block_frame(path, block, context_chars, keep_gold, docs, docs_path, across_records=False)
