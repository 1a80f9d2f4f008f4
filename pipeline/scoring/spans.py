"""neleval's prepare-tac15 step for `pipeline.scoring.measures`: checked columns and document languages,
then one annotation per span with every string coded as an integer, and E601 for mention
sets that differ under strict scoring."""

from __future__ import annotations

import logging

import polars as pl

from pipeline.core import schema
from pipeline.core.errors import InputError, SchemaError
from pipeline.core.languages import UNKNOWN_LANGUAGE
from pipeline.formats.tac import language_expr

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("mention_id", "doc_id", "start", "end", "kb_id", "entity_type", "mention_type", "confidence")
"""Columns `score` needs in the gold and system frames (as `pipeline.formats.tac.read_tab` returns them)."""

SPAN = ("doc_id", "start", "end")
SPAN_KEY = ("doc", "start", "end")  # doc = integer code of doc_id, shared by gold and system
_SHOWN_MISMATCHES = 3


def check_columns(frame: pl.DataFrame, name: str) -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise SchemaError(
            "E602",
            what=name,
            missing=", ".join(missing),
            columns=", ".join(frame.columns),
            fix="read it with pipeline.formats.tac.read_tab or give it those columns",
        )
    null_counts = frame.select(REQUIRED_COLUMNS).null_count().row(0, named=True)
    for column, count in null_counts.items():
        if count:
            row = int(frame.with_row_index("row").filter(pl.col(column).is_null())["row"][0])
            raise SchemaError("E603", what=name, column=column, count=count, row=row)


def document_languages(mention_languages: pl.DataFrame | None) -> pl.LazyFrame | None:
    """Validated `doc_id -> lang` table (one row per document), or None."""
    if mention_languages is None:
        return None
    missing = [column for column in ("doc_id", "lang") if column not in mention_languages.columns]
    if missing:
        raise SchemaError(
            "E602",
            what="mention_languages",
            missing=", ".join(missing),
            columns=", ".join(mention_languages.columns),
            fix="give one row per document with its doc_id and lang",
        )
    languages = mention_languages.select(pl.col("doc_id").cast(pl.String), pl.col("lang").cast(pl.String)).unique()
    conflicts = languages.group_by("doc_id").agg(pl.len().alias("count")).filter(pl.col("count") > 1)
    if conflicts.height:
        conflict = conflicts.sort("doc_id").row(0, named=True)
        raise InputError("E604", what="mention_languages", doc_id=conflict["doc_id"], count=conflict["count"])
    return languages.lazy()


def _coded_rows(gold: pl.DataFrame, system: pl.DataFrame) -> pl.DataFrame:
    """Gold then system rows (side 0/1) with doc, eid and type as UInt32 codes shared by both sides."""

    def rows(frame: pl.DataFrame, side: int) -> pl.LazyFrame:
        return frame.lazy().select(
            pl.lit(side, pl.UInt8).alias("side"),
            pl.col("doc_id").cast(pl.String),
            pl.col("start").cast(pl.Int64),
            pl.col("end").cast(pl.Int64),
            pl.col("kb_id").cast(pl.String),
            pl.concat_str([pl.col("entity_type"), pl.col("mention_type")], separator="/").alias("type"),
            pl.col("confidence").cast(pl.Float64),
        )

    def code(expression: pl.Expr) -> pl.Expr:
        return expression.cast(pl.Categorical).to_physical()

    eid = pl.col("kb_id")
    return (
        pl.concat([rows(gold, 0), rows(system, 1)])
        .with_row_index("row")
        .select(
            "side",
            "row",
            "doc_id",
            code(pl.col("doc_id")).alias("doc"),
            "start",
            "end",
            "confidence",
            code(eid).alias("eid"),
            eid.str.starts_with(schema.NIL_ID).alias("is_nil"),
            code(pl.col("type")).alias("type"),
        )
        .collect()
    )


def _document_languages(coded: pl.DataFrame, languages: pl.LazyFrame | None) -> tuple[pl.DataFrame, dict[int, str]]:
    """((doc, language, lang) per document, {lang code: language}): the given languages, else
    the doc id's own (`language_expr`), else unknown."""
    # Language per document (thousands at most, not per mention), as a small integer code.
    fallback = language_expr(pl.col("doc_id"))
    documents = coded.lazy().select("doc", "doc_id").unique(subset="doc")
    if languages is not None:
        documents = documents.join(languages, on="doc_id", how="left")
        language = pl.coalesce(pl.col("lang"), fallback, pl.lit(UNKNOWN_LANGUAGE))
    else:
        language = pl.coalesce(fallback, pl.lit(UNKNOWN_LANGUAGE))
    documents = (
        documents.select("doc", language.alias("language"))
        .with_columns(pl.col("language").rank("dense").cast(pl.UInt32).alias("lang"))
        .collect()
    )
    names = documents.select("lang", "language").unique()
    language_names = dict(zip(names["lang"].to_list(), names["language"].to_list()))
    return documents, language_names


def span_annotations(
    gold: pl.DataFrame, system: pl.DataFrame, languages: pl.LazyFrame | None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[int, str]]:
    """Gold and system annotations, one per span, as neleval sees them after prepare-tac15.

    Returns (gold, system, language_names). Both sides go through one pipeline so that
    their integer codes agree, and every string is replaced by a UInt32 code (equal codes
    for equal strings) before any sort, join or group_by: `doc` (doc_id), `eid`
    (KB or NIL id), `type` ("entity_type/mention_type"), `lang` (a key of
    `language_names`). Columns: row (input row, gold first), doc, start, end, span (one
    UInt64 per distinct span, see `_span_key`), eid, is_nil, type, lang, and the B-cubed
    cluster sizes (spans with the same eid on the same side) size_overall and
    size_in_lang (within the span's language). Among rows sharing a span the highest
    confidence wins, ties to the earliest row (neleval's stable sorts).
    """

    coded = _coded_rows(gold, system)
    documents, language_names = _document_languages(coded, languages)
    # Pack (side, eid) and (side, lang, eid) into one UInt64 each: single-key windows.
    side_eid = pl.col("eid").cast(pl.UInt64) * 2 + pl.col("side").cast(pl.UInt64)
    annotated = (
        coded.lazy()
        .with_columns(_span_key(coded).alias("span"))
        .sort("confidence", descending=True, maintain_order=True)  # stable: ties stay in row order
        .filter((pl.col("span") * 2 + pl.col("side").cast(pl.UInt64)).is_first_distinct())
        .join(documents.lazy().select("doc", "lang"), on="doc", how="left")
        .with_columns(
            pl.len().over(side_eid).alias("size_overall"),
            pl.len().over(pl.col("lang").cast(pl.UInt64) * (1 << 33) + side_eid).alias("size_in_lang"),
        )
        .drop("confidence", "doc_id")
        .collect()
    )
    return (
        annotated.filter(pl.col("side") == 0).drop("side"),
        annotated.filter(pl.col("side") == 1).drop("side"),
        language_names,
    )


def _span_key(coded: pl.DataFrame) -> pl.Expr:
    """One UInt64 per distinct (doc, start, end), < 2**63 so that key * 2 + side fits.

    Bit-packs doc code, start and length when their ranges fit in 63 bits (exact, and
    what any real corpus gives); otherwise falls back to a dense rank of the triple.
    """
    bounds = coded.select(
        pl.col("doc").max().alias("doc"),
        pl.col("start").min().alias("min_start"),
        pl.col("start").max().alias("max_start"),
        (pl.col("end") - pl.col("start")).min().alias("min_length"),
        (pl.col("end") - pl.col("start")).max().alias("max_length"),
    ).row(0, named=True)
    if coded.height == 0:
        return pl.lit(0, pl.UInt64)
    start_bits = int(bounds["max_start"]).bit_length()
    length_bits = int(bounds["max_length"]).bit_length()
    fits = (
        bounds["min_start"] >= 0
        and bounds["min_length"] >= 0
        and int(bounds["doc"]).bit_length() + start_bits + length_bits <= 63
    )
    if not fits:
        logger.debug("span offsets too wide to bit-pack; ranking spans instead")
        return pl.struct(*SPAN_KEY).rank("dense").cast(pl.UInt64)
    return (
        pl.col("doc").cast(pl.UInt64) * (1 << (start_bits + length_bits))
        + pl.col("start").cast(pl.UInt64) * (1 << length_bits)
        + (pl.col("end") - pl.col("start")).cast(pl.UInt64)
    )


def raise_mismatch(gold: pl.DataFrame, system: pl.DataFrame, *, gold_name: str, system_name: str) -> None:
    """E601 with how many spans each side lacks and the first few (by mention id)."""
    spans = [
        frame.select("mention_id", *(pl.col(c).cast(pl.Int64) if c != "doc_id" else pl.col(c) for c in SPAN)).unique(
            subset=list(SPAN), keep="first"
        )
        for frame in (gold, system)
    ]
    missing = spans[0].join(spans[1], on=list(SPAN), how="anti").sort("mention_id")
    extra = spans[1].join(spans[0], on=list(SPAN), how="anti").sort("mention_id")
    raise InputError(
        "E601",
        gold=gold_name,
        system=system_name,
        n_missing=missing.height,
        missing=_show_spans(missing),
        n_extra=extra.height,
        extra=_show_spans(extra),
    )


def _show_spans(mentions: pl.DataFrame) -> str:
    shown = mentions.head(_SHOWN_MISMATCHES).select(
        pl.format("{} at {}:{}-{}", "mention_id", "doc_id", "start", "end").alias("shown")
    )["shown"]
    return ", ".join(shown.to_list()) or "none"
