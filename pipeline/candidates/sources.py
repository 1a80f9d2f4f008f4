"""The candidate sources: each proposes (mention_id, kb_id, score, source) rows, scores in [0, 1].

- `prior`: P(e|m) from training-split mentions only (never dev/test), keyed by the
  folded and by the romanised mention string;
- `kb_name`: exact match of the folded or romanised string with a KB name or alias, and
  of an all-capitals mention with a name's initials;
- `fuzzy`: a character four-gram index (tantivy, BM25) shortlists KB names, aliases and
  training surface forms, and rapidfuzz rescores the shortlist;
- `dense`: nearest KB names by cosine of the run encoder's mean-pooled name vectors,
  from a FAISS index, which crosses scripts where romanisation cannot (`奥巴马` ->
  `Barack Obama`);
- `external`: a CSV/TSV of candidates from an outside triage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from pipeline.candidates.kb_index import KbIndex, dense_index
from pipeline.candidates.tantivy_index import TantivyNameIndex
from pipeline.core.config import EncoderConfig, TriageConfig
from pipeline.core.errors import InputError, warn
from pipeline.core.progress import progress as progress_counter
from pipeline.core.textnorm import add_keys, content_words, drop_article

logger = logging.getLogger(__name__)

# Names the four-gram index shortlists per mention string for rapidfuzz to rescore.
FUZZY_SHORTLIST = 128


def _best_per_entity(rows: pl.DataFrame, source: str) -> pl.DataFrame:
    """One row per (mention_id, kb_id) of a source's `rows`, with its highest score, tagged `source`."""
    return rows.group_by("mention_id", "kb_id").agg(pl.col("score").max()).with_columns(pl.lit(source).alias("source"))


def alias_priors(aliases: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """P(e|m) of the alias table (`alias_table`) per key: {"mention_fold" | "mention_roman": (key, gold_kb_id, n, score)}."""
    keyed = add_keys(aliases, "mention")
    priors = {}
    for key in ("mention_fold", "mention_roman"):
        # An empty key (a mention of punctuation only, `--`) is no name: it matches nothing.
        counts = keyed.filter(pl.col(key) != "").group_by(key, "gold_kb_id").agg(pl.col("count").sum().alias("n"))
        priors[key] = counts.with_columns((pl.col("n") / pl.col("n").sum().over(key)).alias("score"))
    return priors


def prior_candidates(
    mentions: pl.DataFrame, aliases: pl.DataFrame | None, priors: dict[str, pl.DataFrame] | None = None
) -> pl.DataFrame:
    """P(e|m) from the alias table (`alias_table`), matched on folded, then romanised strings;
    `priors`: the table's `alias_priors`, when the caller has them already."""
    priors = priors if priors is not None else alias_priors(aliases)
    parts = []
    for key, table in priors.items():
        parts.append(
            mentions.select("mention_id", key)
            .join(table, on=key)
            .select("mention_id", pl.col("gold_kb_id").alias("kb_id"), "score")
        )
    return _best_per_entity(pl.concat(parts), "prior")


def kb_name_candidates(mentions: pl.DataFrame, surfaces: pl.DataFrame) -> pl.DataFrame:
    """Exact matches of the folded or the romanised mention string with a KB name or alias
    (score 1), and of an all-capitals mention with a name's initials (`GAO`; score 0.5).
    An empty key (punctuation only: `--`, `...`) matches nothing."""
    parts = []
    for key in ("fold", "roman"):
        parts.append(
            mentions.select("mention_id", pl.col(f"mention_{key}").alias("key"))
            .filter(pl.col("key") != "")
            .join(surfaces.select(pl.col(f"surface_{key}").alias("key"), "kb_id"), on="key")
            .select("mention_id", "kb_id", pl.lit(1.0).alias("score"))
        )
    capitals = mentions.filter(drop_article(pl.col("mention")).str.contains(r"^[A-Z][A-Z.&]{1,7}$"))
    parts.append(
        capitals.select("mention_id", pl.col("mention_roman").str.replace_all(" ", "").alias("key"))
        .join(
            surfaces.filter(pl.col("surface_acronym") != "").select(pl.col("surface_acronym").alias("key"), "kb_id"),
            on="key",
        )
        .select("mention_id", "kb_id", pl.lit(0.5).alias("score"))
    )
    # Repeats (two surfaces of one entity with the same key) fold into one row here.
    return _best_per_entity(pl.concat(parts), "kb_name")


def fuzzy_candidates(
    mentions: pl.DataFrame,
    surfaces: pl.DataFrame,
    roman_keys: pl.Series,
    ngrams: TantivyNameIndex,
    k: int,
    min_score: float,
) -> pl.DataFrame:
    """Fuzzy matches of each distinct romanised mention string among the indexed names.

    The four-gram index shortlists `FUZZY_SHORTLIST` names per string (any object with
    `shortlist(texts, top_n)` -> query, name rows, as the bench's other indexes); rapidfuzz's WRatio
    rescores the shortlisted pairs, and the `4 * k` best at or above `min_score` are kept.
    `roman_keys[i]` is the name at row i of `ngrams`; `surfaces` maps surface_roman to kb_id.
    """
    # Sorted: `unique` order varies from run to run, and ties at a cut would follow it.
    queries = mentions.select(pl.col("mention_roman").unique().sort()).filter(pl.col("mention_roman") != "")[
        "mention_roman"
    ]
    query_content = queries.to_frame().select(content_words(pl.col("mention_roman")))["mention_roman"]
    shortlist = ngrams.shortlist(query_content, top_n=FUZZY_SHORTLIST)
    query_text = queries.gather(shortlist["query"].to_numpy())
    choice_text = roman_keys.gather(shortlist["name"].to_numpy())
    # Scored on content words: WRatio's token-set part would count a shared `de` as a match.
    scores = process.cpdist(
        query_content.gather(shortlist["query"].to_numpy()).to_list(),
        choice_text.to_frame().select(content_words(pl.col(choice_text.name))).to_series().to_list(),
        scorer=fuzz.WRatio,
        workers=-1,
        dtype=np.uint8,
    )
    matches = (
        pl.DataFrame(
            {"mention_roman": query_text, "surface_roman": choice_text, "score": scores.astype(np.float64) / 100.0}
        )
        .filter(pl.col("score") >= min_score / 100.0)
        .sort(["mention_roman", "score", "surface_roman"], descending=[False, True, False])
        .filter(pl.int_range(pl.len()).over("mention_roman") < 4 * k)
    )
    # Not deduplicated first (a `unique` over millions of surfaces): the group_by below does it.
    by_entity = matches.join(surfaces.select("surface_roman", "kb_id"), on="surface_roman")
    return _best_per_entity(mentions.select("mention_id", "mention_roman").join(by_entity, on="mention_roman"), "fuzzy")


def dense_candidates(
    mentions: pl.DataFrame,
    kb: KbIndex,
    encoder_config: EncoderConfig,
    config: TriageConfig,
    encoder=None,
    identity: str | None = None,
) -> pl.DataFrame:
    """Nearest KB names and aliases of each distinct mention string (its leading article
    dropped) by encoder cosine similarity, from a FAISS index cached per KB and encoder
    (under `kb.root`, keyed by `kb.fingerprint`).
    `encoder` (a `LoadedEncoder` of `encoder_config`) and `identity` (its `encoder_identity`, which
    hashes its files) save loading and hashing it again (link calls this per chunk)."""
    from pipeline.encoders.encoder import embed_texts, load_encoder

    encoder = encoder or load_encoder(encoder_config)

    def embed(texts: list[str]) -> np.ndarray:
        with progress_counter(len(texts), "dense triage", "strings") as progress:
            return embed_texts(
                encoder,
                [config.dense_prefix + t for t in texts],
                encoder_config.max_name_tokens,
                encoder_config.batch_tokens,
                progress,
            )

    identity = identity or encoder.identity  # holds the precision, so a change of it rebuilds the index
    settings = {"encoder": identity, "prefix": config.dense_prefix, "max_name_tokens": encoder_config.max_name_tokens}
    names = kb.names.surfaces.select("surface", "kb_id")  # unique already (kb_index.keyed_surfaces)
    # A callable: the distinct names are only needed when the index is built.
    dense = dense_index(lambda: names["surface"].unique().sort().to_list(), embed, kb.root, kb.fingerprint, settings)
    # Sorted, so batches (and with them float rounding) are the same on every run.
    queries = mentions.select(drop_article(pl.col("mention")).alias("query").unique().sort())["query"].to_list()
    logger.info("dense triage: %d mention strings against %d KB names", len(queries), len(dense.surfaces))
    similarities, rows = dense.search(embed(queries), config.dense_k)  # (queries, dense_k)
    found = rows >= 0
    matches = pl.DataFrame(
        {
            "query": np.repeat(np.asarray(queries, dtype=object), found.sum(axis=1)).tolist(),
            "surface": np.asarray(dense.surfaces, dtype=object)[rows[found]].tolist(),
            "score": np.clip(
                (similarities[found].astype(np.float64) - config.dense_floor) / (1 - config.dense_floor), 0, 1
            ),
        },
        schema={"query": pl.String, "surface": pl.String, "score": pl.Float64},
    ).filter(pl.col("score") > 0)
    queried = mentions.select("mention_id", drop_article(pl.col("mention")).alias("query"))
    return _best_per_entity(queried.join(matches, on="query").join(names, on="surface"), "dense")


def external_candidates(path: Path, mentions: pl.DataFrame, kb_ids: pl.DataFrame) -> pl.DataFrame:
    """Candidates from an outside triage: CSV or TSV with mention_id, kb_id, score (header row).

    Returns (mention_id, kb_id, score clipped to [0, 1], source). Rows of mentions not in
    this run (W103) or of KB ids not in `kb_ids` (W106) are dropped with one warning each; a
    repeated (mention_id, kb_id) pair is kept once, with its highest score (W105), so that an
    outside source adds at most 1 to a candidate, as every source does. Malformed files are E112.
    """
    frame = _read_external(path)
    _warn_external_drops(path, frame, mentions, kb_ids)
    return (
        frame.join(mentions.select("mention_id"), on="mention_id", how="semi")
        .join(kb_ids, on="kb_id", how="semi")
        .group_by("mention_id", "kb_id")
        .agg(pl.col("score").max())
        .select("mention_id", "kb_id", pl.col("score").clip(0, 1), pl.lit("external").alias("source"))
    )


def _read_external(path: Path) -> pl.DataFrame:
    """An outside triage's file as (line, mention_id, kb_id, score: Float64, ...); `line` is the
    file's line number (the header is line 1). E108 for a missing file, E112 for one that is not
    CSV/TSV, lacks a column, or has a row without a mention_id, a kb_id or a numeric score."""
    separator = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        frame = pl.read_csv(path, separator=separator, schema_overrides={"mention_id": pl.String, "kb_id": pl.String})
    except FileNotFoundError:
        raise InputError("E108", path=path) from None
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        raise InputError(
            "E112",
            path=path,
            line="?",
            detail=f"cannot be parsed as {'TSV' if separator == chr(9) else 'CSV'}: {str(exc).splitlines()[0]}; "
            "write it with the header mention_id,kb_id,score and three columns a row",
        ) from None
    for column in ("mention_id", "kb_id", "score"):
        if column not in frame.columns:
            raise InputError(
                "E112",
                path=path,
                line=1,
                detail=f"header lacks column '{column}'; give the header mention_id, kb_id, score",
            )
    frame = frame.with_row_index("line", offset=2)
    score = frame["score"].cast(pl.Float64, strict=False)
    bad = frame.filter(score.is_null() | frame["kb_id"].is_null() | frame["mention_id"].is_null()).head(1)
    if not bad.is_empty():
        row = bad.row(0, named=True)
        raise InputError(
            "E112",
            path=path,
            line=row["line"],
            detail=f"needs a mention_id, a kb_id and a numeric score, got {row}; fill in that row or remove it",
        )
    return frame.with_columns(score.alias("score"))


def _warn_external_drops(path: Path, frame: pl.DataFrame, mentions: pl.DataFrame, kb_ids: pl.DataFrame) -> None:
    """W103 for rows of mentions not in this run, W106 for rows of KB ids not in `kb_ids`, W105 for
    repeated (mention_id, kb_id) pairs: one warning each, naming a count and the first example."""
    unknown = frame.join(mentions.select("mention_id"), on="mention_id", how="anti")
    if unknown.height:
        # Outside triage often covers a larger mention set than this run: warned, not refused.
        warn(
            logger,
            "W103",
            path=path,
            count=unknown.height,
            example=f"{unknown['mention_id'][0]!r} on line {unknown['line'][0]}",
        )
    unknown = frame.join(kb_ids, on="kb_id", how="anti")
    if unknown.height:
        warn(logger, "W106", path=path, count=unknown.height, line=unknown["line"][0], example=unknown["kb_id"][0])
    repeated = frame.filter(~pl.struct("mention_id", "kb_id").is_first_distinct())
    if repeated.height:
        first = repeated.row(0, named=True)
        warn(
            logger,
            "W105",
            path=path,
            count=repeated.height,
            line=first["line"],
            example=f"{first['mention_id']},{first['kb_id']}",
        )
