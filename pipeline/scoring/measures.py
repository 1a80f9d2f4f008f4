"""TAC KBP 2015 EDL scoring, measure for measure identical to neleval 3.1.1.

What `neleval prepare-tac15` then `neleval evaluate -m <measure>` computes, reproduced
here with polars joins and group_bys (linear in the number of mentions):

* **Mentions are spans.** A mention is `(doc_id, start, end)` (end inclusive, as in the
  file). Rows of one file with the same span are ONE annotation whose candidates are
  sorted by descending confidence; only the top one counts ("duplicate links with
  confidences: the highest wins"; ties go to the row that comes first in the file, since
  neleval's sorts are stable). Spans are compared exactly: no partial-overlap credit.
* **KB ids** are compared verbatim: `prepare-tac15` computes `normalise_link` (URL
  prefix off, spaces to '_') but only keeps it when given a `--mapping` file, which we
  do not model. An id starting with "NIL" is NIL; its full text is its NIL cluster id.
  The "type" of a mention is `entity_type/mention_type`, so typed measures need both to
  match.
* **Set measures** (`strong_*_match`) compare sets of key tuples: link = (span, kbid)
  over linked mentions only, nil = span over NIL mentions only, all = (span, kbid) with
  every NIL kbid equal (None in neleval); typed variants add the type. P = tp / |system
  tuples|, R = tp / |gold tuples|.
* **B-cubed** clusters spans by their full id (KB id or NIL cluster id) over the whole
  collection, not per document. For each gold item, recall adds |G ∩ S| / |G| (0 when
  the system lacks the item); precision is the same from the system side. Computed from
  the gold-cluster × system-cluster contingency table: R = Σ n_ij² / |G_i| / N_gold,
  P = Σ n_ij² / |S_j| / N_system. **B-cubed+** uses items (span, kbid), so a shared span
  only counts when the KB id (or NIL-ness) also agrees.
* **KBP2010 micro-average** is accuracy over gold mentions with all NILs equal, i.e.
  neleval's `strong_all_match` recall (neleval lists strong_all_match as "equivalent to
  overall accuracy" in its tac09 set); a gold mention the system lacks counts as wrong.
* **Zero denominators** give 0.0 (neleval's `Matrix.div`), and F1 = 2PR / (P + R) is
  0.0 when P + R = 0.
* **Mentions the gold and system do not share.** neleval counts a system-only span as a
  false positive (and as a system item in B-cubed) and a gold-only span as a miss. We
  refuse such input by default (`strict=True`, error E601), because the pipeline always
  writes every gold mention; `strict=False` scores it exactly as neleval does.
* **Per language** is neleval's `evaluate --group-by`: each language's gold and system
  annotations are scored on their own (clusters are cut at the language boundary), and
  only languages present in the gold are reported.

Where we differ (documented, untested by design): neleval groups rows by the raw span
text before parsing offsets, so `D:01-5`, `D: 1-5` and `D:1-5` would be separate
annotations of one span there (and could put it in two clusters); here they are one.

How: both sides go through one polars pipeline in which every string (doc_id, id, type)
becomes an integer code and each span one UInt64 key, so the dedup, the gold/system
join and the contingency group_bys all run on integers. No step loops over mentions in
Python; the only Python loops are over measures and languages.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import polars as pl

from pipeline.core.errors import warn
from pipeline.formats import doc_languages
from pipeline.formats.tac import language_expr, read_tab
from pipeline.scoring.spans import check_columns, document_languages, raise_mismatch, span_annotations

logger = logging.getLogger(__name__)

SET_MEASURES = (
    "strong_link_match",
    "strong_nil_match",
    "strong_all_match",
    "strong_typed_link_match",
    "strong_typed_nil_match",
    "strong_typed_all_match",
)
CLUSTER_MEASURES = ("b_cubed", "b_cubed_plus")
MEASURES = SET_MEASURES + CLUSTER_MEASURES
"""P/R/F1 measures in report order; names as in neleval's configs.MEASURES."""

MICRO_AVERAGE = "kbp2010_micro_average"
OVERALL = "overall"

# kbid equality: all NILs are equal (neleval's kbid is None for them), linked ids by eid.
_SAME_KBID = (pl.col("is_nil") & pl.col("is_nil_sys")) | (
    ~pl.col("is_nil") & ~pl.col("is_nil_sys") & (pl.col("eid") == pl.col("eid_sys"))
)


def score(
    gold: pl.DataFrame,
    system: pl.DataFrame,
    mention_languages: pl.DataFrame | None = None,
    *,
    strict: bool = True,
) -> dict:
    """Score `system` against `gold` with neleval 3.1.1's TAC measures, overall and per language.

    `gold` and `system` have `scoring_spans.REQUIRED_COLUMNS` (what `read_tab` returns). Language is a
    property of the document: `mention_languages` has columns `doc_id, lang` (one lang per
    doc_id; keyed by document, not mention, so that a system-only mention also gets a
    language); documents it does not list fall back to `pipeline.formats.tac.language_of_doc`, then
    to "unknown". With `strict` (default) the two frames must cover the same spans, else
    `InputError` E601; with `strict=False` unmatched spans count as neleval counts them.

    Returns `{"overall": R, "by_language": {lang: R}, "counts": C}` where R maps each of
    `MEASURES` to `{"precision", "recall", "f1"}` and `MICRO_AVERAGE` to
    `{"micro_average"}`, and C = `{"overall": K, "by_language": {lang: K}}` with K =
    gold/system mentions (distinct spans), gold/system NIL mentions, matched spans,
    and (overall only) the raw row counts before duplicate spans were resolved.
    """
    return _score(gold, system, mention_languages, strict=strict, gold_name="gold", system_name="system")


def score_files(
    gold_path: Path,
    system_path: Path,
    mention_languages: pl.DataFrame | None = None,
    *,
    strict: bool = True,
    languages_path: Path | None = None,
) -> dict:
    """`score` two TAC KBP 2015 `.tab` files (read with `read_tab`); errors name the files.

    Document languages: `mention_languages` if given, else the `doc_id<TAB>lang` file
    `languages_path`, else `doc_languages.tsv` beside the gold file when there is one
    (evaluate writes it; see `pipeline.formats.doc_languages`), else the doc ids alone. Gold
    documents left without a language are warned about once (W220).
    """
    gold = read_tab(Path(gold_path))
    system = read_tab(Path(system_path))
    if mention_languages is None:
        languages_path = languages_path or doc_languages.beside(Path(gold_path))
        if languages_path is not None:
            logger.info("document languages from %s", languages_path)
            mention_languages = doc_languages.read_doc_languages(languages_path)
    unknown = gold.select(pl.col("doc_id").unique(maintain_order=True)).filter(
        language_expr(pl.col("doc_id")).is_null()
    )
    if mention_languages is not None and "doc_id" in mention_languages.columns:
        unknown = unknown.join(mention_languages.select(pl.col("doc_id").cast(pl.String)), on="doc_id", how="anti")
    unknown = unknown["doc_id"]
    if unknown.len():
        warn(logger, "W220", count=unknown.len(), path=gold_path, example=unknown[0])
    return _score(
        gold, system, mention_languages, strict=strict, gold_name=str(gold_path), system_name=str(system_path)
    )


def _match_counts(
    gold_mentions: pl.DataFrame, system_mentions: pl.DataFrame, matched: pl.DataFrame
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(per language, overall) mention counts, true positives of each strong match and B-cubed sums."""
    same_type = pl.col("type") == pl.col("type_sys")
    both_linked = ~pl.col("is_nil") & ~pl.col("is_nil_sys")
    both_nil = pl.col("is_nil") & pl.col("is_nil_sys")
    same_kbid = _SAME_KBID
    side_counts = [
        frame.lazy()
        .group_by("lang")
        .agg(pl.len().alias(f"{side}_mentions"), pl.col("is_nil").sum().alias(f"{side}_nil"))
        for frame, side in ((gold_mentions, "gold"), (system_mentions, "system"))
    ]
    true_positives = (
        matched.lazy()
        .group_by("lang")
        .agg(
            pl.len().alias("matched_mentions"),
            (both_linked & same_kbid).sum().alias("strong_link_match"),
            both_nil.sum().alias("strong_nil_match"),
            same_kbid.sum().alias("strong_all_match"),
            (both_linked & same_kbid & same_type).sum().alias("strong_typed_link_match"),
            (both_nil & same_type).sum().alias("strong_typed_nil_match"),
            (same_kbid & same_type).sum().alias("strong_typed_all_match"),
        )
    )
    # Counts and true positives add up over languages; B-cubed sums do not (cluster sizes differ).
    additive = (
        side_counts[0]
        .join(side_counts[1], on="lang", how="full", coalesce=True)
        .join(true_positives, on="lang", how="left")
        .fill_null(0)
    )
    by_language = (
        additive.join(_b_cubed_sums(matched.lazy(), ["lang"], "size_in_lang"), on="lang", how="left")
        .fill_null(0)
        .filter(pl.col("gold_mentions") > 0)  # neleval reports the gold's groups only
    )
    overall = pl.concat(
        [additive.select(pl.exclude("lang").sum()), _b_cubed_sums(matched.lazy(), [], "size_overall")],
        how="horizontal",
    )
    return by_language, overall


def _score(
    gold: pl.DataFrame,
    system: pl.DataFrame,
    mention_languages: pl.DataFrame | None,
    *,
    strict: bool,
    gold_name: str,
    system_name: str,
) -> dict:
    check_columns(gold, gold_name)
    check_columns(system, system_name)
    languages = document_languages(mention_languages)
    gold_mentions, system_mentions, language_names = span_annotations(gold, system, languages)
    # A span's language is its document's, so both sides of a matched span share `lang`.
    payload = ["eid", "is_nil", "type", "size_overall", "size_in_lang"]
    matched = gold_mentions.select("span", "lang", *payload).join(
        system_mentions.select("span", *payload), on="span", how="inner", suffix="_sys"
    )
    if strict and not matched.height == gold_mentions.height == system_mentions.height:
        raise_mismatch(gold, system, gold_name=gold_name, system_name=system_name)

    by_language, overall = _match_counts(gold_mentions, system_mentions, matched)
    by_language_rows, overall_rows = pl.collect_all([by_language, overall])
    overall_row = overall_rows.row(0, named=True)
    # A handful of rows, one per language, keyed by name in sorted order.
    rows = dict(sorted((language_names[row["lang"]], row) for row in by_language_rows.to_dicts()))
    extra_languages = sorted({language_names[code] for code in system_mentions["lang"].unique().to_list()} - set(rows))
    if extra_languages:
        warn(logger, "W601", languages=extra_languages)

    counts_overall = _counts(overall_row)
    counts_overall["gold_rows"] = gold.height
    counts_overall["system_rows"] = system.height
    return {
        OVERALL: _measures(overall_row),
        "by_language": {language: _measures(row) for language, row in rows.items()},
        "counts": {
            OVERALL: counts_overall,
            "by_language": {language: _counts(row) for language, row in rows.items()},
        },
    }


def _b_cubed_sums(matched: pl.LazyFrame, keys: list[str], size: str) -> pl.LazyFrame:
    """B-cubed and B-cubed+ numerators per `keys` group from the contingency table.

    One cell per (gold cluster i, system cluster j) with n_ij shared spans (n+_ij of them
    also agreeing on kbid); `size` names the cluster-size column (|G_i| on the gold side,
    `size`_sys = |S_j| on the system side) counted within the same grouping. Precision
    numerator = sum n_ij^2 / |S_j|, recall numerator = sum n_ij^2 / |G_i|.

    The sums are exactly rounded (`math.fsum`), so they do not depend on the cells' order,
    which group_by and string codes change from run to run: a rerun scores bit for bit
    the same. The Python loop is over groups (languages), not cells.
    """
    cells = (
        matched.group_by(*keys, "eid", "eid_sys")
        .agg(
            pl.len().cast(pl.Float64).alias("n"),
            _SAME_KBID.sum().cast(pl.Float64).alias("n_plus"),
            pl.col(size).first().cast(pl.Float64).alias("gold_size"),
            pl.col(f"{size}_sys").first().cast(pl.Float64).alias("system_size"),
        )
        .select(
            *keys,
            (pl.col("n") ** 2 / pl.col("system_size")).alias("b_cubed_p"),
            (pl.col("n") ** 2 / pl.col("gold_size")).alias("b_cubed_r"),
            (pl.col("n_plus") ** 2 / pl.col("system_size")).alias("b_cubed_plus_p"),
            (pl.col("n_plus") ** 2 / pl.col("gold_size")).alias("b_cubed_plus_r"),
        )
        .collect()
    )
    names = ("b_cubed_p", "b_cubed_r", "b_cubed_plus_p", "b_cubed_plus_r")
    groups = cells.partition_by(keys, as_dict=True, maintain_order=False) if keys else {(): cells}
    rows = [
        {**dict(zip(keys, group)), **{name: math.fsum(part[name].to_numpy()) for name in names}}
        for group, part in groups.items()
    ]
    schema = {**{key: cells.schema[key] for key in keys}, **dict.fromkeys(names, pl.Float64)}
    return pl.DataFrame(rows, schema=schema).lazy()


def _prf(p_numerator: float, p_denominator: float, r_numerator: float, r_denominator: float) -> dict:
    """neleval's Matrix: 0.0 for a zero denominator; F1 = 2PR/(P+R), 0.0 when P+R = 0."""
    precision = p_numerator / float(p_denominator) if p_denominator else 0.0
    recall = r_numerator / float(r_denominator) if r_denominator else 0.0
    total = precision + recall
    f1 = 2 * precision * recall / float(total) if total else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _measures(totals: dict) -> dict:
    """All measures of one group from its totals row (see `_score`)."""
    totals = {
        **totals,
        "system_link": totals["system_mentions"] - totals["system_nil"],
        "gold_link": totals["gold_mentions"] - totals["gold_nil"],
    }
    link, nil, every = ("system_link", "gold_link"), ("system_nil", "gold_nil"), ("system_mentions", "gold_mentions")
    denominators = {  # (system tuples, gold tuples) after each measure's filter
        "strong_link_match": link,
        "strong_nil_match": nil,
        "strong_all_match": every,
        "strong_typed_link_match": link,
        "strong_typed_nil_match": nil,
        "strong_typed_all_match": every,
    }
    report = {}
    for measure in SET_MEASURES:
        system_count, gold_count = denominators[measure]
        true_positives = totals[measure]
        report[measure] = _prf(true_positives, totals[system_count], true_positives, totals[gold_count])
    for measure in CLUSTER_MEASURES:
        report[measure] = _prf(
            totals[f"{measure}_p"], totals["system_mentions"], totals[f"{measure}_r"], totals["gold_mentions"]
        )
    report[MICRO_AVERAGE] = {"micro_average": report["strong_all_match"]["recall"]}
    return report


def _counts(totals: dict) -> dict:
    names = ("gold_mentions", "system_mentions", "gold_nil", "system_nil", "matched_mentions")
    return {name: int(totals[name]) for name in names}
