"""Error analysis of a run's decisions (the paper's §6-7): where linking goes wrong, and NIL.

Every figure counts mentions of the evaluation split with gold (as KBP2010
micro-average does: a mention is right when its decision equals the gold, every NIL
equal), split
- by whether the gold entity was the gold of a training mention the ranker learned from
  (seen / unseen; gold NIL its own group),
- by the gold's rank in triage's candidates (not found / 1 / 2-5 / 6-k),
- by the mention's entity type and by language;
with NIL precision, recall and F1 per language (NIL decided vs gold NIL over the same
mentions: neleval's strong_nil_match), the triage recall ceiling (the micro-average a
perfect ranker and NIL decision would reach over triage's candidates) beside the
achieved one, and the most frequent confusions (gold -> predicted, count, an example).

`analyse` returns two tables (written as `analysis.parquet` and `confusions.parquet`);
`markdown` renders them for report.md.
"""

from __future__ import annotations

import polars as pl

from pipeline.core import schema

ALL = "all"
TOP_CONFUSIONS = 20
ANALYSES = ("seen in training", "triage rank", "entity type", "language")


def _f1(precision: pl.Expr, recall: pl.Expr) -> pl.Expr:
    return pl.when((precision + recall) > 0).then(2 * precision * recall / (precision + recall)).otherwise(0.0)


def outcome_scores(decided: pl.DataFrame) -> pl.DataFrame:
    """Per language and over all (lang = "all"): mentions, micro_average, nil_precision, nil_recall, nil_f1.

    decided needs lang, gold_kb_id, kb_id (the decision: a KB id or NIL); rows without
    gold are left out. Precision is 0 when nothing is said NIL, recall 0 without gold NILs.
    """
    frame = decided.filter(pl.col("gold_kb_id").is_not_null()).select(
        "lang",
        (pl.col("kb_id") == pl.col("gold_kb_id")).fill_null(False).alias("right"),
        (pl.col("gold_kb_id") == schema.NIL_ID).alias("gold_nil"),
        (pl.col("kb_id") == schema.NIL_ID).alias("says_nil"),
    )
    frame = pl.concat([frame, frame.with_columns(pl.lit(ALL).alias("lang"))])
    table = frame.group_by("lang").agg(
        pl.len().alias("mentions"),
        pl.col("right").mean().alias("micro_average"),
        (pl.col("gold_nil") & pl.col("says_nil")).sum().alias("both"),
        pl.col("says_nil").sum().alias("said"),
        pl.col("gold_nil").sum().alias("gold"),
    )
    precision = pl.when(pl.col("said") > 0).then(pl.col("both") / pl.col("said")).otherwise(0.0)
    recall = pl.when(pl.col("gold") > 0).then(pl.col("both") / pl.col("gold")).otherwise(0.0)
    return (
        table.with_columns(precision.alias("nil_precision"), recall.alias("nil_recall"))
        .with_columns(_f1(pl.col("nil_precision"), pl.col("nil_recall")).alias("nil_f1"))
        .select("lang", "mentions", "micro_average", "nil_precision", "nil_recall", "nil_f1")
        .sort(pl.col("lang") == ALL, "lang")
    )


ERROR_KINDS = ("not among candidates", "wrong entity", "false NIL", "missed NIL")


def error_kinds(decisions: dict[str, pl.DataFrame], candidates: pl.DataFrame) -> pl.DataFrame:
    """Each method's mentions by outcome, per language and over all: (method, lang, mentions, right, and one
    count per ERROR_KINDS entry), methods in the order given.

    decisions: {method: decided table (mention_id, lang, gold_kb_id, kb_id = the decision)};
    candidates: triage's table (mention_id, kb_id). The kinds do not overlap: a linked gold
    triage did not propose is "not among candidates" whatever was decided; otherwise a linked
    gold decided NIL is a "false NIL", decided as another entity a "wrong entity"; a NIL gold
    decided as an entity is a "missed NIL".
    """
    proposed = candidates.select("mention_id", pl.col("kb_id").alias("gold_kb_id"), pl.lit(True).alias("proposed"))
    gold_nil, says_nil = pl.col("gold_kb_id") == schema.NIL_ID, pl.col("kb_id") == schema.NIL_ID
    right = (pl.col("kb_id") == pl.col("gold_kb_id")).fill_null(False)
    kinds = {
        "right": right,
        "not among candidates": ~gold_nil & pl.col("proposed").is_null(),
        "wrong entity": ~gold_nil & pl.col("proposed").is_not_null() & ~says_nil & ~right,
        "false NIL": ~gold_nil & pl.col("proposed").is_not_null() & says_nil,
        "missed NIL": gold_nil & ~says_nil,
    }
    tables = []
    for method, decided in decisions.items():
        frame = decided.filter(pl.col("gold_kb_id").is_not_null()).join(
            proposed, on=["mention_id", "gold_kb_id"], how="left"
        )
        frame = pl.concat([frame, frame.with_columns(pl.lit(ALL).alias("lang"))])
        tables.append(
            frame.group_by("lang")
            .agg(pl.len().alias("mentions"), *(kind.sum().alias(name) for name, kind in kinds.items()))
            .with_columns(pl.lit(method).alias("method"))
        )
    order = {method: index for index, method in enumerate(decisions)}
    return (
        pl.concat(tables)
        .with_columns(pl.col("method").replace_strict(order).alias("order"))
        .sort("order", pl.col("lang") == ALL, "lang")
        .drop("order")
        .select("method", pl.exclude("method"))
    )


def error_kinds_markdown(table: pl.DataFrame) -> str:
    """report.md's ranker-and-reader table: per method and language, right and each kind of error."""
    lines = [
        "## Errors by kind, per NIL method",
        "",
        "Mentions of the evaluation split with gold. The ranker's methods (threshold, classifier, nota) link the "
        "ranker's best candidate; `reader` links the reader's. *Not among candidates*: triage did not propose "
        "the gold (wrong whatever is decided); *false NIL*: a linked gold decided NIL; *wrong entity*: another "
        "entity linked; *missed NIL*: a NIL gold linked.",
        "",
        "| method | language | mentions | right | " + " | ".join(ERROR_KINDS) + " |",
        "| --- " * (4 + len(ERROR_KINDS)) + "|",
    ]
    lines += [
        f"| {row['method']} | {row['lang']} | {row['mentions']} | {row['right']} | "
        + " | ".join(str(row[kind]) for kind in ERROR_KINDS)
        + " |"
        for row in table.iter_rows(named=True)
    ]
    return "\n".join(lines) + "\n"


def analyse(
    evaluated: pl.DataFrame,
    candidates: pl.DataFrame,
    seen_kb_ids: list[str],
    names: pl.LazyFrame | pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(analysis table, confusions table) of decided mentions.

    evaluated: the evaluation split's mentions with gold (mention_id, lang, mention,
    entity_type, gold_kb_id, kb_id = the decision); candidates: triage's table
    (mention_id, rank, kb_id); seen_kb_ids: gold KB ids of the mentions the ranker
    trained on. The analysis table is long: (analysis, group, lang, mentions, correct,
    accuracy), lang = "all" across languages; analysis "NIL" adds nil_precision,
    nil_recall, nil_f1 and "triage ceiling" adds ceiling (its accuracy is the achieved
    micro-average). Confusions: (gold_kb_id, gold_name, predicted_kb_id, predicted_name, count,
    example), the TOP_CONFUSIONS most frequent wrong decisions, most frequent first; the names
    come from `names` (the KB's kb_id, name: triage's entities.parquet), null for NIL or without it.
    """
    frame = _judged(evaluated, candidates)
    return _analysis_table(frame, seen_kb_ids), with_names(_confusions(frame), names)


_GOLD_NIL = pl.col("gold_kb_id") == schema.NIL_ID


def _judged(evaluated: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """The mentions with gold, each with its gold's triage rank (`gold_rank`, null when triage missed it),
    whether its decision is `right` and whether the gold was `reachable` (a NIL, or among the candidates)."""
    gold_rank = candidates.select("mention_id", pl.col("kb_id").alias("gold_kb_id"), pl.col("rank").alias("gold_rank"))
    return (
        evaluated.filter(pl.col("gold_kb_id").is_not_null())
        .join(gold_rank, on=["mention_id", "gold_kb_id"], how="left")
        .with_columns(
            (pl.col("kb_id") == pl.col("gold_kb_id")).fill_null(False).alias("right"),
            (_GOLD_NIL | pl.col("gold_rank").is_not_null()).alias("reachable"),
        )
    )


def _groupings(seen_kb_ids: list[str]) -> dict[str, pl.Expr]:
    """Each analysis of `ANALYSES` as the expression that puts a judged mention in its group."""
    rank = pl.col("gold_rank")
    return {
        "seen in training": pl.when(_GOLD_NIL)
        .then(pl.lit("NIL gold"))
        .when(pl.col("gold_kb_id").is_in(seen_kb_ids))
        .then(pl.lit("seen"))
        .otherwise(pl.lit("unseen")),
        "triage rank": pl.when(_GOLD_NIL)
        .then(pl.lit("NIL gold"))
        .when(rank.is_null())
        .then(pl.lit("not found"))
        .when(rank == 1)
        .then(pl.lit("1"))
        .when(rank <= 5)
        .then(pl.lit("2-5"))
        .otherwise(pl.lit("6-k")),
        "entity type": pl.col("entity_type").fill_null("unknown"),
        "language": pl.col("lang"),
    }


def _analysis_table(frame: pl.DataFrame, seen_kb_ids: list[str]) -> pl.DataFrame:
    """`analyse`'s long table of `_judged` mentions: one row per analysis, group and language (and all)."""
    both = pl.concat([frame, frame.with_columns(pl.lit(ALL).alias("lang"))])
    tables = []
    for name, group in _groupings(seen_kb_ids).items():
        tables.append(
            both.with_columns(group.alias("group"))
            .group_by("group", "lang")
            .agg(pl.len().alias("mentions"), pl.col("right").sum().alias("correct"))
            .with_columns(pl.lit(name).alias("analysis"))
        )
    ceiling = both.group_by("lang").agg(
        pl.len().alias("mentions"), pl.col("right").sum().alias("correct"), pl.col("reachable").mean().alias("ceiling")
    )
    tables.append(ceiling.with_columns(pl.lit("triage ceiling").alias("analysis"), pl.lit(ALL).alias("group")))
    nil = (
        outcome_scores(frame)
        .drop("micro_average")
        .with_columns(pl.lit("NIL").alias("analysis"), pl.lit("NIL").alias("group"))
    )
    nil_counts = both.filter(_GOLD_NIL).group_by("lang").agg(pl.col("right").sum().alias("correct"))
    tables.append(nil.join(nil_counts, on="lang", how="left").with_columns(pl.col("correct").fill_null(0)))
    return (
        pl.concat(tables, how="diagonal_relaxed")
        .with_columns(
            pl.col("correct").cast(pl.Int64),
            pl.col("mentions").cast(pl.Int64),
            (pl.col("correct") / pl.col("mentions")).alias("accuracy"),
        )
        .select(
            "analysis",
            "group",
            "lang",
            "mentions",
            "correct",
            "accuracy",
            "nil_precision",
            "nil_recall",
            "nil_f1",
            "ceiling",
        )
        .sort("analysis", "group", pl.col("lang") != ALL, "lang")
    )


def _confusions(frame: pl.DataFrame) -> pl.DataFrame:
    """The `TOP_CONFUSIONS` most frequent wrong decisions of `_judged` mentions (gold_kb_id, predicted_kb_id,
    count, example), most frequent first."""
    return (
        frame.filter(~pl.col("right"))
        .sort("mention_id")
        .group_by(pl.col("gold_kb_id"), pl.col("kb_id").alias("predicted_kb_id"))
        .agg(pl.len().alias("count"), pl.col("mention").first().alias("example"))
        .sort(pl.col("count"), pl.col("gold_kb_id"), pl.col("predicted_kb_id"), descending=[True, False, False])
        .head(TOP_CONFUSIONS)
    )


def with_names(confusions: pl.DataFrame, names: pl.LazyFrame | pl.DataFrame | None) -> pl.DataFrame:
    """Confusions with gold_name and predicted_name beside their KB ids (read for those ids only)."""
    ids = pl.concat([confusions["gold_kb_id"], confusions["predicted_kb_id"]]).unique()
    known = pl.DataFrame(schema={"kb_id": pl.String, "name": pl.String})
    if names is not None:
        known = names.lazy().select("kb_id", "name").filter(pl.col("kb_id").is_in(ids.implode())).collect()
    named = confusions
    for column in ("gold", "predicted"):
        named = named.join(
            known.rename({"kb_id": f"{column}_kb_id", "name": f"{column}_name"}),
            on=f"{column}_kb_id",
            how="left",
            maintain_order="left",
        )
    return named.select("gold_kb_id", "gold_name", "predicted_kb_id", "predicted_name", "count", "example")


def _named(kb_id: str, name: str | None) -> str:
    """A KB id with its entity's name, for report.md: `Q76 (Barack Obama)`; the id alone without one."""
    return f"{kb_id} ({name})" if name else kb_id


def _cell(row: dict) -> str:
    return f"{row['accuracy']:.3f} ({row['mentions']})"


def markdown(table: pl.DataFrame, confusions: pl.DataFrame) -> str:
    """report.md's error analysis: one block per analysis (rows: groups, columns: languages), then confusions."""
    languages = [ALL] + sorted(set(table["lang"].to_list()) - {ALL})
    header = "| group | " + " | ".join(languages) + " |"
    rule = "| --- " * (len(languages) + 1) + "|"
    lines = [
        "## Error analysis",
        "",
        "Accuracy (mentions) on the evaluation split: a mention is right when the decision equals the gold.",
        "",
    ]
    for name in ANALYSES[:-1]:  # by language: the columns; its accuracy is the "achieved" row below
        part = table.filter(pl.col("analysis") == name)
        lines += [f"### By {name}", "", header, rule]
        for group in sorted(part["group"].unique().to_list()):
            cells = {row["lang"]: _cell(row) for row in part.filter(pl.col("group") == group).iter_rows(named=True)}
            lines.append(f"| {group} | " + " | ".join(cells.get(lang, "-") for lang in languages) + " |")
        lines.append("")
    nil = {row["lang"]: row for row in table.filter(pl.col("analysis") == "NIL").iter_rows(named=True)}
    ceiling = {row["lang"]: row for row in table.filter(pl.col("analysis") == "triage ceiling").iter_rows(named=True)}
    lines += ["### NIL detection and the triage ceiling", "", header, rule]
    for label, source, field in (
        ("NIL precision", nil, "nil_precision"),
        ("NIL recall", nil, "nil_recall"),
        ("NIL F1", nil, "nil_f1"),
        ("triage ceiling", ceiling, "ceiling"),
        ("achieved micro-average", ceiling, "accuracy"),
    ):
        lines.append(
            f"| {label} | "
            + " | ".join(f"{source[lang][field]:.3f}" if lang in source else "-" for lang in languages)
            + " |"
        )
    fewer = [] if confusions.height >= TOP_CONFUSIONS else [f"(This split has {confusions.height} in all.)", ""]
    lines += [
        "",
        f"### The {TOP_CONFUSIONS} most frequent confusions",
        "",
        *fewer,
        "| gold | predicted | count | example mention |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {_named(row['gold_kb_id'], row.get('gold_name'))} | {_named(row['predicted_kb_id'], row.get('predicted_name'))} "
        f"| {row['count']} | {row['example']} |"
        for row in confusions.iter_rows(named=True)
    ]
    return "\n".join(lines) + "\n"
