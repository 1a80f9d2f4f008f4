"""Checks of a mentions table that later stages (encode, scoring, TAC output) rely on.

`pipeline.formats.inputs` reads mentions from JSONL or TAC files into one frame; `check_mentions`
then refuses, with the file and line of the first offending mention and how many more
there are, what would otherwise break a stage later or skew its result:

- a blank id, document id, language or mention string (E103), an unknown split (E103);
- a document id with whitespace or an id with a tab or line break, which `gold.tab` and
  `system.tab` cannot hold (E116);
- offsets that cover nothing (E114), fall outside the text (E105) or do not cover the
  mention string (E106; with `fragments`, the string is the fragments' texts joined by one
  space, see `pipeline.formats.fragments`);
- one document given two languages (E117), which per-language scores cannot place;
- one document given two texts (E120): offsets into one and into the other would mix; so is a
  mention's own whole text other than the docs file's (`check_docs_file_texts`);
- two mentions of one document span (E115): TAC scoring keys mentions by span, so the
  second row would be dropped from the score while still counted as evaluated.

Every check is a polars expression over the whole frame; only the first bad row is
formatted into the message.
"""

from __future__ import annotations

import unicodedata
from operator import itemgetter
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.errors import InputError
from pipeline.core.languages import LANGUAGE_TAG, LANGUAGE_TAG_HINT, is_language_tag_expr

SPLITS = ("train", "dev", "test")
"""The splits a mention may name; a mention without one is test."""

# gold.tab/system.tab are tab-separated lines; a TAC span is `doc_id:start-end` with no space.
_LINE_BREAKING = r"[\t\r\n]"
_WHITESPACE = r"\s"
_SPLIT_LINE = "would split its line of gold.tab and system.tab"
# (column, what it holds, what it cannot have, that in words, why, what to do): E116's fields. A blank gold id
# is none already (`inputs.given_gold`).
_TAC_UNSAFE = (
    (
        "doc_id",
        "document id",
        _WHITESPACE,
        "whitespace",
        "a TAC span (doc_id:start-end) in gold.tab and system.tab cannot hold",
        "replace it (e.g. with '_') in the mentions and docs files",
    ),
    ("id", "mention id", _LINE_BREAKING, "a tab or line break", _SPLIT_LINE, "remove it"),
    ("gold_kb_id", "gold KB id", _LINE_BREAKING, "a tab or line break", _SPLIT_LINE, "remove it"),
)
# A mention's id and document (E117, E120).
_DOCUMENT_OF_ROW = {"record_id": itemgetter("id"), "doc_id": itemgetter("doc_id")}
_OWN_WINDOWS_HINT = ", or, where each mention's `text` is its own window of the document, give doc_start/doc_end"
_DROP_REPEATS_HINT = (
    ", or let xel keep the first mention of each span: `inputs.drop_duplicate_spans = true` in a run's config, "
    "`--drop-duplicate-spans` for `xel-cli link`"
)
_SPLITS_EXPECTED = "'train', 'dev' or 'test' (or no split: test)"
# A mention's id and span as its file gives them (`check_offsets`' shown_start and shown_end).
_SHOWN_SPAN = {"record_id": itemgetter("id"), "start": itemgetter("shown_start"), "end": itemgetter("shown_end")}


def more(count: int) -> str:
    """The message tail that says how many more rows share the reported fault."""
    return f" ({count} more line(s) like it)" if count > 0 else ""


def _first(frame: pl.DataFrame, condition: pl.Expr) -> tuple[dict | None, int]:
    """(first row by line where `condition` holds, how many more rows it holds for) or (None, 0)."""
    bad = frame.filter(condition.fill_null(False))
    if bad.is_empty():
        return None, 0
    return bad.sort("line").row(0, named=True), bad.height - 1


def refuse_first(frame: pl.DataFrame, condition: pl.Expr, path: Path, code: str, **fields: Any) -> None:
    """InputError `code` naming `path`, the line of the first row (by `line`) of `frame` where
    `condition` holds and how many more rows it holds for; none where it holds for no row.

    `fields` fill the rest of the code's template: each a value, or a function of the offending row
    (a dict of its columns; `itemgetter("id")` for a column's value).
    """
    row, count = _first(frame, condition)
    if row is not None:
        values = {name: value(row) if callable(value) else value for name, value in fields.items()}
        raise InputError(code, path=path, line=row["line"], more=more(count), **values)


def check_fields(frame: pl.DataFrame, path: Path, languages_given: bool = True) -> None:
    """Blank required strings (E103), a lang that is no language tag (E103, `pipeline.core.languages`),
    unknown splits (E103) and ids TAC files cannot hold (E116, `_check_tac_ids`).

    frame needs: line, id, doc_id, lang, mention, split (null = test), gold_kb_id (a blank one
    already none: `inputs.given_gold`). Without `languages_given` the languages are the
    reader's own (a TAC doc id's, or `unknown`): not checked.
    """
    for column in ("id", "doc_id", "lang", "mention"):
        blank = pl.col(column).str.strip_chars() == ""
        refuse_first(frame, blank, path, "E103", field=column, expected="a non-blank string", got=itemgetter(column))
    if languages_given:
        not_a_tag = ~is_language_tag_expr(pl.col("lang"))
        refuse_first(
            frame,
            not_a_tag,
            path,
            "E103",
            field="lang",
            expected=LANGUAGE_TAG,
            hint=LANGUAGE_TAG_HINT,
            got=itemgetter("lang"),
        )
    unknown_split = ~pl.col("split").is_in(SPLITS) & pl.col("split").is_not_null()
    refuse_first(frame, unknown_split, path, "E103", field="split", expected=_SPLITS_EXPECTED, got=itemgetter("split"))
    _check_tac_ids(frame, path)


def _check_tac_ids(frame: pl.DataFrame, path: Path) -> None:
    """E116 for an id `gold.tab` and `system.tab` cannot hold (`_TAC_UNSAFE`)."""
    for column, what, pattern, bad, why, fix in _TAC_UNSAFE:
        unsafe = pl.col(column).str.contains(pattern)
        refuse_first(frame, unsafe, path, "E116", what=what, value=itemgetter(column), bad=bad, why=why, fix=fix)


def check_offsets(frame: pl.DataFrame, path: Path, end_inclusive: bool = False, fix: str = "") -> None:
    """Offsets must cover at least one character inside the context, and exactly the mention.

    frame needs: line, id, mention, context, start, end (in the context, end exclusive),
    doc_start, doc_end (the file's own offsets, or null when the file gave start/end) and
    optionally `fragment_text` (see `pipeline.formats.fragments.fragment_texts`). Offsets in
    messages are the file's: document offsets where it gave them, end inclusive for TAC
    files. `fix` is appended to E106's advice.
    """
    shown_start = pl.coalesce("doc_start", "start")
    shown_end = pl.coalesce("doc_end", "end") - (1 if end_inclusive else 0)
    shown = frame.with_columns(shown_start.alias("shown_start"), shown_end.alias("shown_end"))

    def empty_detail(row: dict) -> str:
        if end_inclusive:
            return "end comes before start; end is inclusive, so a one-character mention at S is S-S"
        return "start equals end: an empty span" if row["start"] == row["end"] else "end comes before start"

    refuse_first(shown, pl.col("start") >= pl.col("end"), path, "E114", **_SHOWN_SPAN, detail=empty_detail)
    outside = (pl.col("start") < 0) | (pl.col("end") > pl.col("context").str.len_chars())
    refuse_first(shown, outside, path, "E105", **_SHOWN_SPAN, length=lambda row: len(row["context"]))
    covered = pl.col("context").str.slice(pl.col("start"), pl.col("end") - pl.col("start"))
    expected = pl.coalesce("fragment_text", "covered") if "fragment_text" in frame.columns else pl.col("covered")
    checked = shown.with_columns(covered.alias("covered")).with_columns(expected.alias("expected"))

    def hint(row: dict) -> str:
        return normalisation_hint(row["mention"], row["expected"])

    not_the_mention = pl.col("expected") != pl.col("mention")
    refuse_first(
        checked,
        not_the_mention,
        path,
        "E106",
        **_SHOWN_SPAN,
        mention=itemgetter("mention"),
        inclusive=" (end inclusive)" if end_inclusive else "",
        covered=itemgetter("expected"),
        why=hint,
        fix=lambda row: "" if hint(row) else fix,
    )


def normalisation_hint(mention: str, covered: str) -> str:
    """A message part saying that two unequal strings differ only by Unicode normalisation, else ""."""
    if unicodedata.normalize("NFC", mention) == unicodedata.normalize("NFC", covered):
        return (
            " (they differ only by Unicode normalisation: one has composed characters (NFC), the other "
            "decomposed ones (NFD); write both in NFC)"
        )
    if unicodedata.normalize("NFKC", mention) == unicodedata.normalize("NFKC", covered):
        return (
            " (they differ only by Unicode compatibility normalisation (NFKC), e.g. full-width or "
            "ligature characters; write the mention as its text has it)"
        )
    return ""


def check_documents(frame: pl.DataFrame, path: Path, end_inclusive: bool = False) -> None:
    """One language per document (E117) and one mention per document span (E115).

    frame needs: line, id, doc_id, lang, start/end or doc_start/doc_end, gold_kb_id. A
    span is (doc_id, doc_start, doc_end), or the mention's own start/end when the file
    gave no document offsets (as evaluate writes it to gold.tab).
    """
    ordered = frame.sort("line")
    first = pl.col("line").first().over("doc_id")
    first_lang = pl.col("lang").first().over("doc_id")
    langs = ordered.with_columns(first.alias("first_line"), first_lang.alias("first_lang"))
    other_lang = pl.col("lang") != pl.col("first_lang")
    seen = {name: itemgetter(name) for name in ("lang", "first_line", "first_lang")}
    refuse_first(langs, other_lang, path, "E117", **_DOCUMENT_OF_ROW, **seen)
    span = [pl.col("doc_id"), pl.coalesce("doc_start", "start"), pl.coalesce("doc_end", "end")]
    spans = ordered.with_columns(
        pl.col("line").first().over(span).alias("first_line"),
        pl.col("id").first().over(span).alias("other_id"),
        pl.col("gold_kb_id").first().over(span).alias("other_gold"),
        span[1].alias("span_start"),
        (span[2] - (1 if end_inclusive else 0)).alias("span_end"),
    )
    refuse_first(
        spans,
        pl.col("line") != pl.col("first_line"),
        path,
        "E115",
        record_id=itemgetter("id"),
        span=lambda row: f"{row['doc_id']}:{row['span_start']}-{row['span_end']}",
        other_id=itemgetter("other_id"),
        first_line=itemgetter("first_line"),
        gold=_other_gold,
        hint=lambda row: ("" if row["doc_start"] is not None else _OWN_WINDOWS_HINT) + _DROP_REPEATS_HINT,
    )


def _other_gold(row: dict) -> str:
    """E115's note on a repeated span's two gold ids, where they differ."""
    if row["gold_kb_id"] == row["other_gold"]:
        return ""
    return f" (gold {row['other_gold']!r} there, {row['gold_kb_id']!r} here)"


def check_document_texts(frame: pl.DataFrame, path: Path) -> None:
    """One text per document (E120): the mentions' offsets into a document must index one text.

    frame needs: line, id, doc_id, text_hash (a hash of the mention's own `text` where it gave no
    doc_start/doc_end and the docs file lacks its document; null otherwise: a document of the
    docs file has that one text, which `check_docs_file_texts` holds each whole `text` to, and
    a `text` beside doc_start/doc_end is a window of the document, which may differ). Hashes,
    not texts, so `pipeline.link.sources.check_corpus` can compare them across chunks.
    """
    given = frame.filter(pl.col("text_hash").is_not_null()).sort("line")
    firsts = given.with_columns(
        pl.col("line").first().over("doc_id").alias("first_line"),
        pl.col("text_hash").first().over("doc_id").alias("first_hash"),
    )
    other_text = pl.col("text_hash") != pl.col("first_hash")
    refuse_first(
        firsts, other_text, path, "E120", **_DOCUMENT_OF_ROW, first=lambda row: f"line {row['first_line']} gives it"
    )


def check_docs_file_texts(frame: pl.DataFrame, path: Path, docs_path: Path) -> None:
    """A mention's own whole text (`text` without doc_start/doc_end) must be the docs file's text of its
    document, where the docs file holds it (E120); a row's own check, so the same in every link chunk.

    frame needs: line, id, doc_id, text, doc_start, doc_text (null: not in the docs file) and
    docs_line (the document's line in the docs file, null where unknown).
    """

    def first(row: dict) -> str:
        where = f"{docs_path}:{row['docs_line']}" if row["docs_line"] is not None else f"the docs file {docs_path}"
        return f"{where} gives it"

    other_text = pl.col("doc_start").is_null() & (pl.col("text") != pl.col("doc_text"))
    refuse_first(frame, other_text, path, "E120", **_DOCUMENT_OF_ROW, first=first)


def check_mentions(
    frame: pl.DataFrame,
    path: Path,
    end_inclusive: bool = False,
    languages_given: bool = True,
    across_records: bool = True,
) -> None:
    """All of this module's checks on the mentions read from `path` (see the module docstring).

    The JSONL reader calls them one by one instead: fields and documents before it renames
    repeated ids, offsets once contexts are cut from the docs file. Without `across_records`
    (one chunk of a corpus: `pipeline.link.sources.check_corpus` compares records over all
    chunks, so that the lines named never depend on the chunk size) `check_documents` is left out.
    """
    check_fields(frame, path, languages_given)
    check_offsets(frame, path, end_inclusive)
    if across_records:
        check_documents(frame, path, end_inclusive)
