"""Read the user's inputs (mentions, docs, KB, TAC gold + sources) into normalised tables.

Every check here reports the file and line of the offending record. The KB is read in
blocks and written straight to Parquet, so millions of entities never sit in memory as
Python objects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.config import InputsConfig
from pipeline.core.errors import InputError, warn
from pipeline.core.io import atomic_path, check_record_fields, iter_jsonl_blocks
from pipeline.core.languages import LANGUAGE_TAG, LANGUAGE_TAG_HINT, UNKNOWN_LANGUAGE, is_language_tag, language_expr
from pipeline.core.progress import progress
from pipeline.formats.fragments import FRAGMENTS_DTYPE, fragment_texts, read_fragments
from pipeline.formats.input_checks import (
    check_docs_file_texts,
    check_document_texts,
    check_documents,
    check_fields,
    check_mentions,
    check_offsets,
    refuse_first,
)
from pipeline.formats.kb_records import KbRecords

logger = logging.getLogger(__name__)

MENTION_FIELDS: dict[str, tuple[Any, bool]] = {
    "id": (str, True),
    "doc_id": (str, True),
    "lang": (str, True),
    "mention": (str, True),
    "text": (str, False),
    "start": (int, False),
    "end": (int, False),
    "doc_start": (int, False),
    "doc_end": (int, False),
    "gold_kb_id": (str, False),
    "entity_type": (str, False),
    "mention_type": (str, False),
    "split": (str, False),
    "named": (bool, False),
    "fragments": (list, False),  # a discontinuous mention's parts: pipeline/formats/fragments.py
}
DOC_FIELDS: dict[str, tuple[Any, bool]] = {"doc_id": (str, True), "lang": (str, False), "text": (str, True)}
ENTITIES_ARROW = pa.schema(
    [
        ("kb_id", pa.string()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("type", pa.string()),
        ("alias_texts", pa.list_(pa.string())),
    ]
)


def first_duplicate(ids: pl.Series, lines: pl.Series) -> tuple[str, int, int] | None:
    """(id, first line, second line) of the first repeated id, or None."""
    frame = pl.DataFrame({"record_id": ids, "line": lines})
    repeated = (
        frame.with_columns(pl.col("line").rank("ordinal").over("record_id").alias("nth"))
        .filter(pl.col("nth") == 2)
        .sort("line")
        .head(1)
    )
    if repeated.is_empty():
        return None
    record_id, line = repeated.row(0)[:2]
    first = frame.filter(pl.col("record_id") == record_id)["line"].min()
    return record_id, int(first), int(line)


RENAME_REPEATS_HINT = (
    ", or let xel rename each repeat to id#start-end: `inputs.rename_duplicate_ids = true` in a run's config, "
    "`--rename-duplicate-ids` for `xel-cli link`"
)


RENAMED_REPEAT_HINT = (
    " (a repeat's new id, id#start-end, is another mention's id already: give one of the two another id)"
)


def check_unique_ids(ids: pl.Series, lines: pl.Series, path: Path, kind: str, renamed: bool = False) -> None:
    """E104 naming the first id of `kind` records ("mention", "document", "KB") given twice in `path`,
    with the lines of both; `renamed`: the repeats were renamed already (`rename_repeated_ids`), so the
    advice is not to rename them."""
    duplicate = first_duplicate(ids, lines)
    if duplicate:
        raise InputError(
            "E104",
            path=path,
            line=duplicate[2],
            kind=kind,
            record_id=duplicate[0],
            first_line=duplicate[1],
            hint=RENAMED_REPEAT_HINT if renamed else RENAME_REPEATS_HINT if kind == "mention" else "",
        )


def check_doc_record(path: Path, line: int, record: dict) -> None:
    """Fields and types of one docs record (E102, E103), and its `lang`, when given, a language tag (E103)."""
    check_record_fields(path, line, record, DOC_FIELDS)
    if record.get("lang") is not None and not is_language_tag(record["lang"]):
        raise InputError(
            "E103",
            path=path,
            line=line,
            field="lang",
            expected=LANGUAGE_TAG,
            hint=LANGUAGE_TAG_HINT,
            got=record["lang"],
        )


def read_docs(path: Path) -> pl.DataFrame:
    """Docs JSONL -> DataFrame(doc_id, doc_text, line); records checked by `check_doc_record`."""
    rows: dict[str, list] = {"doc_id": [], "doc_text": [], "line": []}
    for block in iter_jsonl_blocks(path):
        for line, record in block:
            check_doc_record(path, line, record)
            rows["doc_id"].append(record["doc_id"])
            rows["doc_text"].append(record["text"])
            rows["line"].append(line)
    docs = pl.DataFrame(rows, schema={"doc_id": pl.String, "doc_text": pl.String, "line": pl.Int64})
    check_unique_ids(docs["doc_id"], docs["line"], path, "document")
    return docs


def _mention_records(
    path: Path, docs_path: Path | None, blocks: Iterable[list[tuple[int, dict]]] | None
) -> pl.DataFrame:
    """The records of `path` (or `blocks`) as columns of `MENTION_FIELDS` and `line`, each record's
    fields checked (E102/E103) and its text or document offsets present (E111)."""
    columns: dict[str, list] = {name: [] for name in MENTION_FIELDS}
    columns["line"] = []
    for block in iter_jsonl_blocks(path) if blocks is None else blocks:
        for line, record in block:
            check_record_fields(path, line, record, MENTION_FIELDS)
            record["fragments"] = read_fragments(path, line, record)
            has_text = (
                record.get("text") is not None and record.get("start") is not None and record.get("end") is not None
            )
            has_doc = record.get("doc_start") is not None and record.get("doc_end") is not None
            if not has_text and not (has_doc and docs_path is not None):
                raise InputError("E111", path=path, line=line, record_id=record["id"])
            for name in MENTION_FIELDS:
                columns[name].append(record.get(name))
            columns["line"].append(line)
    types = {
        name: (
            pl.Int64
            if spec[0] is int
            else pl.Boolean
            if spec[0] is bool
            else FRAGMENTS_DTYPE
            if spec[0] is list
            else pl.String
        )
        for name, spec in MENTION_FIELDS.items()
    }
    frame = pl.DataFrame(columns, schema={**types, "line": pl.Int64}).with_columns(given_gold())
    return frame


def _with_contexts(frame: pl.DataFrame, path: Path, docs_path: Path | None, docs: pl.DataFrame | None) -> pl.DataFrame:
    """`context` (the mention's own text, else its document's) with `start`/`end` into it, and `doc_text`;
    a text that differs from the docs file's is E120."""
    if docs_path is not None:  # also when every mention has its own text: that text must be the docs file's
        frame = _docs_texts(frame, read_docs(docs_path) if docs is None else docs, path, docs_path)
        check_docs_file_texts(frame, path, docs_path)
        from_doc = pl.col("text").is_null()
        frame = frame.with_columns(
            pl.coalesce("text", "doc_text").alias("context"),
            pl.when(from_doc).then(pl.col("doc_start")).otherwise(pl.col("start")).alias("start"),
            pl.when(from_doc).then(pl.col("doc_end")).otherwise(pl.col("end")).alias("end"),
        )
        return frame
    return frame.with_columns(pl.col("text").alias("context"), pl.lit(None, pl.String).alias("doc_text"))


@dataclass(frozen=True)
class GivenRecords:
    """Mention records given in memory instead of read from a JSONL file (`xel-cli link`: one chunk of a
    large file or of Parquet rows at a time, or the records of `Linker.link`).

    `blocks`: lists of (line, record); `docs` (doc_id, doc_text, optionally its `line`): the documents
    they point to, read instead of the docs file; without `across_records` (a link chunk) the checks
    that compare mentions with each other (E104, E115, E117, E120 between mentions) are left to
    `pipeline.link.sources.check_corpus`, which makes them over all chunks, so that the line a
    message names never depends on the chunk size.
    """

    blocks: Iterable[list[tuple[int, dict]]]
    docs: pl.DataFrame | None = None
    across_records: bool = True


def read_mentions_jsonl(
    path: Path,
    docs_path: Path | None,
    context_chars: int,
    rename_duplicate_ids: bool = False,
    drop_duplicate_spans: bool = False,
    given: GivenRecords | None = None,
) -> pl.DataFrame:
    """Mentions JSONL (+ optional docs JSONL) -> the `schema.MENTIONS` table.

    A mention carries either its own `text` with `start`/`end`, or `doc_start`/`doc_end`
    into a document of the docs file; either way a window of `context_chars` characters on
    each side of it becomes its context (`context_window`). A `text` without doc offsets is
    its document's text, so one doc_id must not be given two (E120, `text_hash` says which),
    nor one other than the docs file's, when a docs file is given and holds the document (E120);
    a `text` beside doc_start/doc_end is a window of the document and may differ. `given`
    replaces reading `path`, which then only names the records in errors (see `GivenRecords`).
    With `drop_duplicate_spans` a mention of a span an earlier line covers is dropped (W108,
    `drop_duplicate_spans`) instead of refused (E115).
    """
    across_records = given is None or given.across_records
    frame = _mention_records(path, docs_path, None if given is None else given.blocks)
    check_fields(frame, path)
    # "EN", " en", "en-US" and "en" are one language (thresholds, scores and the model are keyed by it).
    frame = frame.with_columns(language_expr(pl.col("lang")))
    if drop_duplicate_spans:
        frame = drop_repeated_spans(frame, path)
    if rename_duplicate_ids:
        check_documents(frame, path)  # a repeated id over the same span is a copy, not a second mention
        frame = rename_repeated_ids(frame, path)
    if across_records:
        check_unique_ids(frame["id"], frame["line"], path, "mention", renamed=rename_duplicate_ids)
        check_documents(frame, path)
    frame = _with_contexts(frame, path, docs_path, None if given is None else given.docs)
    # Only a whole `text` (no doc offsets) of a document the docs file lacks can disagree with
    # another mention's: a docs-file document has one text, checked above; windows may differ.
    own_whole_text = pl.col("doc_start").is_null() & pl.col("doc_text").is_null()
    frame = frame.with_columns(pl.when(own_whole_text).then(pl.col("text").hash(seed=0)).alias("text_hash"))
    if across_records:
        check_document_texts(frame, path)
    check_offsets(fragment_texts(frame), path, fix=" (a discontinuous mention lists its parts in 'fragments')")
    frame = frame.with_columns(
        pl.col("id").alias("mention_id"),
        pl.coalesce("doc_start", "start").alias("doc_start"),
        pl.coalesce("doc_end", "end").alias("doc_end"),
        pl.col("split").fill_null("test"),
    )
    return _mentions_table(frame, context_chars)


# What the mention readers return: `schema.MENTIONS` (gold_tac_id aside: `normalise_gold` adds it), whether
# the mention is a name, its line in the input and `text_hash` (`read_mentions_jsonl`).
READ_COLUMNS = (
    "mention_id",
    "doc_id",
    "lang",
    "mention",
    "context",
    "start",
    "end",
    "doc_start",
    "doc_end",
    "split",
    "gold_kb_id",
    "entity_type",
    "mention_type",
    "named",
    "line",
    "text_hash",
)


def _mentions_table(frame: pl.DataFrame, context_chars: int) -> pl.DataFrame:
    """The `READ_COLUMNS` of checked mentions, each context cut to its window (`context_window`)."""
    return context_window(frame, context_chars).select(READ_COLUMNS)


def context_window(frame: pl.DataFrame, context_chars: int) -> pl.DataFrame:
    """Cut each row's `context` to `context_chars` characters on each side of its mention.

    frame needs: context, start, end (the mention in the context, end exclusive, checked to
    lie inside it); returns it with those three replaced by the window and the mention's
    offsets in it. The one rule for every source of text (a docs file, a mention's own
    `text`, a TAC source document), so the context does not depend on how the text was given
    and a long text is never tokenized whole.
    """
    window_start = pl.max_horizontal(pl.col("start") - context_chars, pl.lit(0))
    window_end = pl.min_horizontal(pl.col("end") + context_chars, pl.col("context").str.len_chars())
    return (
        frame.with_columns(window_start.alias("window_start"))
        .with_columns(
            pl.col("context").str.slice(pl.col("window_start"), window_end - pl.col("window_start")),
            pl.col("start") - pl.col("window_start"),
            pl.col("end") - pl.col("window_start"),
        )
        .drop("window_start")
    )


def rename_repeated_ids(frame: pl.DataFrame, path: Path, setting: str = "inputs.rename_duplicate_ids") -> pl.DataFrame:
    """Give every repeat of an id after its first the suffix `#start-end` of its span, warning once (W101
    naming the `setting` that asked for it)."""
    nth = pl.col("line").rank("ordinal").over("id")
    start = pl.coalesce("doc_start", "start").cast(pl.String)
    end = pl.coalesce("doc_end", "end").cast(pl.String)
    renamed = frame.with_columns(
        pl.when(nth > 1)
        .then(pl.concat_str(pl.col("id"), pl.lit("#"), start, pl.lit("-"), end))
        .otherwise(pl.col("id"))
        .alias("id")
    )
    changed = int((renamed["id"] != frame["id"]).sum())
    if changed:
        warn(logger, "W101", path=path, count=changed, setting=setting)
    return renamed


def drop_repeated_spans(
    frame: pl.DataFrame,
    path: Path,
    id_column: str = "id",
    gold_column: str = "gold_kb_id",
    setting: str = "inputs.drop_duplicate_spans",
) -> pl.DataFrame:
    """Keep the first mention (by `line`) of each span and drop the others, warning once (W108, naming the
    `setting` that asked for it) with how many, how many of them carried another gold id, and the first one
    dropped.

    A span is (doc_id, start, end) as `check_documents` keys it: doc_start/doc_end where the frame
    has them (JSONL), else start/end (a TAC `.tab`'s lines, end inclusive on both sides alike).
    """
    offsets = (
        [pl.coalesce("doc_start", "start"), pl.coalesce("doc_end", "end")]
        if "doc_start" in frame.columns
        else [pl.col("start"), pl.col("end")]
    )
    span = [pl.col("doc_id"), *offsets]
    ordered = frame.sort("line").with_columns(
        pl.col("line").first().over(span).alias("first_line"),
        pl.col(gold_column).first().over(span).alias("first_gold"),
    )
    dropped = ordered.filter(pl.col("line") != pl.col("first_line"))
    if dropped.is_empty():
        return frame
    other_gold = int(dropped.select(pl.col(gold_column).ne_missing(pl.col("first_gold")).sum()).item())
    labelled = dropped.select(pl.col(gold_column).is_not_null() | pl.col("first_gold").is_not_null()).to_series().any()
    row = dropped.row(0, named=True)
    example = f"mention {row[id_column]!r}"
    if labelled:  # unlabelled input (link's) has no gold to compare
        example += f" (gold {row[gold_column]!r}; the first has {row['first_gold']!r})"
    warn(
        logger,
        "W108",
        path=path,
        count=dropped.height,
        gold=f"{other_gold} of them with another gold id; " if labelled else "",
        line=row["line"],
        first_line=row["first_line"],
        example=example,
        setting=setting,
    )
    return frame.join(dropped.select("line"), on="line", how="anti", maintain_order="left")


def _docs_texts(frame: pl.DataFrame, docs: pl.DataFrame, path: Path, docs_path: Path) -> pl.DataFrame:
    """Join each mention's document text (`doc_text`, and its line in the docs file, `docs_line`, where
    `docs` has one) and check the doc offsets of mentions without `text` against it (E109, E114, E105);
    `context_window` then cuts the context."""
    docs_line = pl.col("line") if "line" in docs.columns else pl.lit(None, pl.Int64)
    joined = frame.join(docs.select("doc_id", "doc_text", docs_line.alias("docs_line")), on="doc_id", how="left")
    mention_of_row = {"record_id": itemgetter("id")}
    no_text = pl.col("text").is_null() & pl.col("doc_text").is_null()
    refuse_first(joined, no_text, path, "E109", **mention_of_row, doc_id=itemgetter("doc_id"), docs_path=docs_path)
    from_doc = joined.filter(pl.col("text").is_null())
    span = {**mention_of_row, "start": itemgetter("doc_start"), "end": itemgetter("doc_end")}

    def empty_detail(row: dict) -> str:
        return "end comes before start" if row["doc_start"] > row["doc_end"] else "start equals end; end is exclusive"

    refuse_first(from_doc, pl.col("doc_start") >= pl.col("doc_end"), path, "E114", **span, detail=empty_detail)
    outside = (pl.col("doc_start") < 0) | (pl.col("doc_end") > pl.col("doc_text").str.len_chars())
    refuse_first(from_doc, outside, path, "E105", **span, length=lambda row: len(row["doc_text"]))
    return joined


def read_tac_mentions(
    gold_by_split: dict[str, Path], source_dir: Path, context_chars: int, drop_duplicate_spans: bool = False
) -> pl.DataFrame:
    """TAC KBP 2015 EDL gold `.tab` files + raw source documents -> the `schema.MENTIONS` table.

    Offsets in the `.tab` file count characters of the raw source file (XML included),
    end inclusive; the document is `<doc_id>.txt` or `<doc_id>.xml` in `source_dir`, with
    ':' in the id written as '__' (as in MEANTIME's TAC release).
    """
    if not source_dir.is_dir():
        raise InputError("E108", path=source_dir)
    lines = read_tac_lines(gold_by_split)
    if drop_duplicate_spans:  # the first line of each span in each .tab file (lines count per file); W108 per file
        lines = pl.concat(
            [
                drop_repeated_spans(
                    lines.filter(pl.col("tab_path") == tab_path),
                    Path(tab_path),
                    id_column="mention_id",
                    gold_column="kb_id",
                )
                for tab_path in lines["tab_path"].unique(maintain_order=True).to_list()
            ]
        )
    return tac_mentions(lines, source_dir, context_chars)


def read_tac_lines(gold_by_split: dict[str, Path]) -> pl.DataFrame:
    """The `.tab` files' lines (`tac.read_tab` columns + line, split, tab_path), in file order.

    `xel-cli link` reads a large file once with this and hands `tac_mentions` a slice of
    lines per chunk, so only that chunk's documents are read.
    """
    from pipeline.formats.tac import read_tab

    frames = []
    for split, tab_path in gold_by_split.items():
        gold = read_tab(tab_path).with_row_index("line", offset=1).with_columns(pl.lit(split).alias("split"))
        frames.append(gold.with_columns(pl.col("line").cast(pl.Int64), pl.lit(str(tab_path)).alias("tab_path")))
    return pl.concat(frames)


def tac_mentions(gold: pl.DataFrame, source_dir: Path, context_chars: int, across_records: bool = True) -> pl.DataFrame:
    """`read_tac_lines` lines (all, or a slice) + their source documents -> the `schema.MENTIONS` table;
    see `read_tac_mentions`. Checks the mentions against their `.tab` file (E105, E106, E114; E115
    unless not `across_records`, for a link chunk: `check_corpus` compares spans over all chunks)."""
    from pipeline.formats.tac import language_of_doc

    doc_ids = gold["doc_id"].unique(maintain_order=True).to_list()
    doc_texts = {doc_id: _read_source(source_dir, doc_id, gold) for doc_id in doc_ids}
    docs = pl.DataFrame({"doc_id": list(doc_texts), "doc_text": list(doc_texts.values())})
    langs = pl.DataFrame({"doc_id": doc_ids, "lang": [language_of_doc(d) or UNKNOWN_LANGUAGE for d in doc_ids]})
    frame = (
        gold.join(docs, on="doc_id", how="left")
        .join(langs, on="doc_id", how="left")
        .with_columns(
            pl.col("start").alias("doc_start"),
            (pl.col("end") + 1).alias("doc_end"),
            pl.col("doc_text").alias("context"),
            (pl.col("end") + 1).alias("end"),
            pl.col("mention_id").alias("id"),
            pl.col("kb_id").alias("gold_kb_id"),
            pl.lit(None, pl.UInt64).alias("text_hash"),  # one source file per document: one text
            (pl.col("mention_type") == "NAM").alias("named"),
        )
    )
    for tab_path in gold["tab_path"].unique(maintain_order=True).to_list():  # on the whole text: E105 gives its length
        check_mentions(
            frame.filter(pl.col("tab_path") == tab_path),
            Path(tab_path),
            end_inclusive=True,
            languages_given=False,
            across_records=across_records,
        )
    return _mentions_table(frame, context_chars)


def _read_source(source_dir: Path, doc_id: str, gold: pl.DataFrame) -> str:
    """The text of `doc_id`'s source file in `source_dir`; E110 when it is not UTF-8, E108 naming the
    `.tab` file and line of its first mention (`gold`: `read_tac_lines` rows) when there is none."""
    names = list(dict.fromkeys((doc_id, doc_id.replace(":", "__"))))
    for name in names:
        for suffix in (".txt", ".xml", ""):
            path = source_dir / f"{name}{suffix}"
            if path.is_file():
                raw = path.read_bytes()
                try:
                    return raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(
                        "E110", path=path, line=raw[: exc.start].count(b"\n") + 1, detail=exc.reason
                    ) from None
    first = gold.filter(pl.col("doc_id") == doc_id).row(0, named=True)
    tried = ", ".join(
        f"{name}{suffix}"
        for name in names
        for suffix in (".txt", ".xml", "")
        if f"{name}{suffix}" != f"{names[-1]}.txt"
    )
    raise InputError(
        "E108",
        path=source_dir / f"{names[-1]}.txt",
        hint=f" (the source document {doc_id!r} of mention {first['mention_id']!r} on "
        f"{first['tab_path']}:{first['line']}; also tried {tried})",
        fix_first=f"put the document's file in {source_dir}, fix the doc_id on that line, or ",
    )


def load_mentions(config: InputsConfig) -> pl.DataFrame:
    """The run's mentions from JSONL or TAC inputs, normalised to `schema.MENTIONS` (+ `line`); a TAC
    `.tab`'s type column is each mention's `entity_type`, as JSONL's field, unless inputs.ignore_entity_type."""
    if config.mentions is not None:
        frame = read_mentions_jsonl(
            config.mentions,
            config.docs,
            config.context_chars,
            config.rename_duplicate_ids,
            drop_duplicate_spans=config.drop_duplicate_spans,
        )
    else:
        splits = {
            split: path
            for split, path in (("train", config.tac_train), ("dev", config.tac_dev), ("test", config.tac_test))
            if path is not None
        }
        frame = read_tac_mentions(splits, config.tac_source, config.context_chars, config.drop_duplicate_spans)
    if config.named_only:
        frame = frame.filter(pl.col("named").fill_null(True))
    if config.ignore_entity_type:
        frame = without_entity_type(frame)
    return normalise_gold(frame)


def without_entity_type(frame: pl.DataFrame) -> pl.DataFrame:
    """The mentions with no `entity_type` (inputs.ignore_entity_type, `xel-cli link --ignore-entity-type`):
    the ranker's type features then see none, as for mentions that give none."""
    return frame.with_columns(pl.lit(None, pl.String).alias("entity_type"))


def normalise_gold(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep the gold id as written in `gold_tac_id`; in `gold_kb_id` every NIL cluster id is NIL.

    TAC NIL cluster ids ("NIL0042") count as NIL for linking; clusters are evaluate's business.
    A blank gold id is none (`given_gold`; the JSONL reader applies it before its checks).
    """
    frame = frame.with_columns(given_gold())
    return frame.with_columns(
        pl.col("gold_kb_id").alias("gold_tac_id"),
        pl.when(pl.col("gold_kb_id").str.starts_with(schema.NIL_ID))
        .then(pl.lit(schema.NIL_ID))
        .otherwise(pl.col("gold_kb_id"))
        .alias("gold_kb_id"),
    )


def given_gold() -> pl.Expr:
    """`gold_kb_id` with an empty or only-whitespace id (tabs, line breaks too) as none: no KB id is blank,
    so such a mention counts as one without gold, never as a KB id the KB lacks or one with a tab in it."""
    return pl.when(pl.col("gold_kb_id").str.strip_chars() != "").then(pl.col("gold_kb_id")).alias("gold_kb_id")


def write_docs(docs_path: Path, out_path: Path) -> int:
    """Stream a docs JSONL into Parquet (doc_id, doc_text, line) block by block; returns the document count.

    For `xel-cli link`, which then reads only each chunk's documents back, so a large
    corpus's text never sits in memory at once. Records are checked as `read_docs` does.
    """
    arrow = pa.schema([("doc_id", pa.string()), ("doc_text", pa.string()), ("line", pa.int64())])
    count = 0
    with atomic_path(out_path) as temp_path:
        with pq.ParquetWriter(temp_path, arrow, compression="zstd") as writer:
            for block in iter_jsonl_blocks(docs_path):
                for line, record in block:
                    check_doc_record(docs_path, line, record)
                writer.write_table(
                    pa.table(
                        {
                            "doc_id": [r["doc_id"] for _, r in block],
                            "doc_text": [r["text"] for _, r in block],
                            "line": [line for line, _ in block],
                        },
                        schema=arrow,
                    )
                )
                count += len(block)
    return count


def write_entities(kb_path: Path, out_path: Path) -> int:
    """Stream the KB JSONL into `entities.parquet` block by block; returns the entity count.

    Records are checked by `pipeline.formats.kb_records.KbRecords` (E102-E104, E116; W104, W107).
    """
    ids: list[pl.Series] = []
    lines: list[pl.Series] = []
    count = 0
    records = KbRecords(kb_path)
    with atomic_path(out_path) as temp_path, progress(None, "triage: KB", "entities", delay=2.0) as counter:
        writer = pq.ParquetWriter(temp_path, ENTITIES_ARROW, compression="zstd")
        try:
            for block in iter_jsonl_blocks(kb_path):
                columns: dict[str, list] = {name: [] for name in ENTITIES_ARROW.names}
                block_lines = []
                for line, record in block:
                    entity = records.add(line, record)
                    for column, value in zip(ENTITIES_ARROW.names, entity):
                        columns[column].append(value)
                    block_lines.append(line)
                writer.write_table(pa.table(columns, schema=ENTITIES_ARROW))
                ids.append(pl.Series(columns["kb_id"], dtype=pl.String))
                lines.append(pl.Series(block_lines, dtype=pl.Int64))
                count += len(block_lines)
                counter.update(len(block_lines))
        finally:
            writer.close()
        check_unique_ids(pl.concat(ids), pl.concat(lines), kb_path, "KB")
    records.warn()
    return count


def gold_missing_from_kb(mentions: pl.DataFrame, entities: pl.LazyFrame) -> tuple[pl.Series, int, str]:
    """(the gold KB ids, NIL aside, that `entities` (column kb_id) lacks, sorted; how many mentions carry
    them; up to three of them quoted, as W102 and link's W702 show them: spaces show)."""
    gold = mentions.filter(schema.linked_gold()).select("gold_kb_id")
    missing = gold.join(entities.select(pl.col("kb_id").alias("gold_kb_id")).collect(), on="gold_kb_id", how="anti")
    ids = missing["gold_kb_id"].unique().sort()
    return ids, missing.height, ", ".join(map(repr, ids.head(3).to_list()))


def check_gold_in_kb(mentions: pl.DataFrame, entities: pl.LazyFrame, mentions_path: Path | None) -> int:
    """Count gold links to ids missing from the KB (they can never be linked; warned, not refused)."""
    ids, carried_by, example = gold_missing_from_kb(mentions, entities)
    if ids.len():
        warn(
            logger, "W102", count=ids.len(), mentions=carried_by, path=mentions_path or "the TAC gold", example=example
        )
    return ids.len()
