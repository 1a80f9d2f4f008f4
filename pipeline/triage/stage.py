"""Triage: the top-k candidate entities of every mention.

Sources, each switchable and recorded per candidate:
- `prior`: P(e|m) from training-split mentions only (never dev/test), keyed by the
  folded and by the romanised mention string;
- `kb_name`: exact match of the folded or romanised string with a KB name or alias, and
  of an all-capitals mention with a name's initials;
- `fuzzy`: a character four-gram index (tantivy, BM25) shortlists KB names, aliases and
  training surface forms, and rapidfuzz rescores the shortlist;
- `dense`: nearest KB names by cosine of the run encoder's mean-pooled name vectors,
  from a FAISS index, which crosses scripts where romanisation cannot (`奥巴马` ->
  `Barack Obama`);
- `external`: a CSV/TSV of candidates from an outside triage;
- `oracle`: the gold entity added when missing (the paper's Multi+Or).
A candidate's score is the sum of its sources' scores (each in [0, 1]). The KB-side
indexes are built once per KB file and reused (`pipeline/triage/kb_index.py`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from pipeline.core import schema
from pipeline.model.aliases import alias_table
from pipeline.core.config import EncoderConfig, RunConfig, TriageConfig, to_dict
from pipeline.core.errors import InputError, warn
from pipeline.formats.inputs import check_gold_in_kb, load_mentions
from pipeline.core.io import atomic_path, file_fingerprint, write_json_atomic, write_parquet_atomic
from pipeline.core.manifest import StageResult, StageRun
from pipeline.triage.kb_index import KbNames, dense_index, kb_entities, name_ngrams, names_index
from pipeline.core.progress import progress as progress_counter
from pipeline.triage.tantivy_index import TantivyNameIndex
from pipeline.core.textnorm import add_keys, content_words, drop_article

logger = logging.getLogger(__name__)

STAGE = "triage"
STAGE_VERSION = 3
RECALL_AT = (1, 5, 10, 30, 100)
# Names the four-gram index shortlists per mention string for rapidfuzz to rescore.
FUZZY_SHORTLIST = 128


def alias_priors(aliases: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """P(e|m) of the alias table (`alias_table`) per key: {"mention_fold" | "mention_roman": (key, gold_kb_id, n, score)}."""
    keyed = add_keys(aliases, "mention")
    priors = {}
    for key in ("mention_fold", "mention_roman"):
        # An empty key (a mention of punctuation only, `--`) is no name: it matches nothing.
        counts = keyed.filter(pl.col(key) != "").group_by(key, "gold_kb_id").agg(pl.col("count").sum().alias("n"))
        priors[key] = counts.with_columns((pl.col("n") / pl.col("n").sum().over(key)).alias("score"))
    return priors


def prior_candidates(mentions: pl.DataFrame, aliases: pl.DataFrame,
                     priors: dict[str, pl.DataFrame] | None = None) -> pl.DataFrame:
    """P(e|m) from the alias table (`alias_table`), matched on folded, then romanised strings;
    `priors`: the table's `alias_priors`, when the caller has them already."""
    priors = priors if priors is not None else alias_priors(aliases)
    parts = []
    for key, table in priors.items():
        parts.append(mentions.select("mention_id", key).join(table, on=key)
                     .select("mention_id", pl.col("gold_kb_id").alias("kb_id"), "score"))
    best = pl.concat(parts).group_by("mention_id", "kb_id").agg(pl.col("score").max())
    return best.with_columns(pl.lit("prior").alias("source"))


def kb_name_candidates(mentions: pl.DataFrame, surfaces: pl.DataFrame) -> pl.DataFrame:
    """Exact matches of the folded or the romanised mention string with a KB name or alias
    (score 1), and of an all-capitals mention with a name's initials (`GAO`; score 0.5).
    An empty key (punctuation only: `--`, `...`) matches nothing."""
    parts = []
    for key in ("fold", "roman"):
        parts.append(mentions.select("mention_id", pl.col(f"mention_{key}").alias("key")).filter(pl.col("key") != "")
                     .join(surfaces.select(pl.col(f"surface_{key}").alias("key"), "kb_id"), on="key")
                     .select("mention_id", "kb_id", pl.lit(1.0).alias("score")))
    capitals = mentions.filter(drop_article(pl.col("mention")).str.contains(r"^[A-Z][A-Z.&]{1,7}$"))
    parts.append(capitals.select("mention_id", pl.col("mention_roman").str.replace_all(" ", "").alias("key"))
                 .join(surfaces.filter(pl.col("surface_acronym") != "").select(pl.col("surface_acronym").alias("key"), "kb_id"),
                       on="key")
                 .select("mention_id", "kb_id", pl.lit(0.5).alias("score")))
    # Repeats (two surfaces of one entity with the same key) fold into one row here.
    return (pl.concat(parts).group_by("mention_id", "kb_id").agg(pl.col("score").max())
            .with_columns(pl.lit("kb_name").alias("source")))


def fuzzy_candidates(mentions: pl.DataFrame, surfaces: pl.DataFrame, roman_keys: pl.Series, ngrams: TantivyNameIndex,
                     k: int, min_score: float) -> pl.DataFrame:
    """Fuzzy matches of each distinct romanised mention string among the indexed names.

    The four-gram index shortlists `FUZZY_SHORTLIST` names per string (any object with
    `shortlist(texts, top_n)` -> query, name rows, as the bench's other indexes); rapidfuzz's WRatio
    rescores the shortlisted pairs, and the `4 * k` best at or above `min_score` are kept.
    `roman_keys[i]` is the name at row i of `ngrams`; `surfaces` maps surface_roman to kb_id.
    """
    # Sorted: `unique` order varies from run to run, and ties at a cut would follow it.
    queries = mentions.select(pl.col("mention_roman").unique().sort()).filter(pl.col("mention_roman") != "")["mention_roman"]
    query_content = queries.to_frame().select(content_words(pl.col("mention_roman")))["mention_roman"]
    shortlist = ngrams.shortlist(query_content, top_n=FUZZY_SHORTLIST)
    query_text = queries.gather(shortlist["query"].to_numpy())
    choice_text = roman_keys.gather(shortlist["name"].to_numpy())
    # Scored on content words: WRatio's token-set part would count a shared `de` as a match.
    scores = process.cpdist(query_content.gather(shortlist["query"].to_numpy()).to_list(),
                            choice_text.to_frame().select(content_words(pl.col(choice_text.name))).to_series().to_list(),
                            scorer=fuzz.WRatio, workers=-1, dtype=np.uint8)
    matches = (pl.DataFrame({"mention_roman": query_text, "surface_roman": choice_text,
                             "score": scores.astype(np.float64) / 100.0})
               .filter(pl.col("score") >= min_score / 100.0)
               .sort(["mention_roman", "score", "surface_roman"], descending=[False, True, False])
               .filter(pl.int_range(pl.len()).over("mention_roman") < 4 * k))
    # Not deduplicated first (a `unique` over millions of surfaces): the group_by below does it.
    by_entity = matches.join(surfaces.select("surface_roman", "kb_id"), on="surface_roman")
    return (mentions.select("mention_id", "mention_roman").join(by_entity, on="mention_roman")
            .group_by("mention_id", "kb_id").agg(pl.col("score").max())
            .with_columns(pl.lit("fuzzy").alias("source")))


def dense_candidates(mentions: pl.DataFrame, surfaces: pl.DataFrame, encoder_config: EncoderConfig,
                     config: TriageConfig, index_root: Path, kb_fingerprint: str, encoder=None,
                     identity: str | None = None) -> pl.DataFrame:
    """Nearest KB names and aliases of each distinct mention string (its leading article
    dropped) by encoder cosine similarity, from a FAISS index cached per KB and encoder.
    `encoder` (a `LoadedEncoder` of `encoder_config`) and `identity` (its `encoder_identity`, which
    hashes its files) save loading and hashing it again (link calls this per chunk)."""
    from pipeline.encoders.encoder import embed_texts, encoder_identity, load_encoder, resolve_encoder_path

    encoder = encoder or load_encoder(encoder_config)

    def embed(texts: list[str]) -> np.ndarray:
        with progress_counter(len(texts), "dense triage", "strings") as progress:
            return embed_texts(encoder, [config.dense_prefix + t for t in texts], encoder_config.max_name_tokens,
                               encoder_config.batch_tokens, progress)

    identity = identity or encoder_identity(resolve_encoder_path(encoder_config.name))
    settings = {"encoder": identity, "prefix": config.dense_prefix,
                "max_name_tokens": encoder_config.max_name_tokens}
    names = surfaces.select("surface", "kb_id")  # unique already (kb_index.keyed_surfaces)
    # A callable: the distinct names are only needed when the index is built.
    dense = dense_index(lambda: names["surface"].unique().sort().to_list(), embed, index_root, kb_fingerprint, settings)
    # Sorted, so batches (and with them float rounding) are the same on every run.
    queries = mentions.select(drop_article(pl.col("mention")).alias("query").unique().sort())["query"].to_list()
    logger.info("dense triage: %d mention strings against %d KB names", len(queries), len(dense.surfaces))
    similarities, rows = dense.search(embed(queries), config.dense_k)  # (queries, dense_k)
    found = rows >= 0
    matches = pl.DataFrame({
        "query": np.repeat(np.asarray(queries, dtype=object), found.sum(axis=1)).tolist(),
        "surface": np.asarray(dense.surfaces, dtype=object)[rows[found]].tolist(),
        "score": np.clip((similarities[found].astype(np.float64) - config.dense_floor) / (1 - config.dense_floor), 0, 1),
    }, schema={"query": pl.String, "surface": pl.String, "score": pl.Float64}).filter(pl.col("score") > 0)
    return (mentions.select("mention_id", drop_article(pl.col("mention")).alias("query")).join(matches, on="query")
            .join(names, on="surface").group_by("mention_id", "kb_id").agg(pl.col("score").max())
            .with_columns(pl.lit("dense").alias("source")))


def external_candidates(path: Path, mentions: pl.DataFrame, kb_ids: pl.DataFrame) -> pl.DataFrame:
    """Candidates from an outside triage: CSV or TSV with mention_id, kb_id, score (header row).

    Returns (mention_id, kb_id, score clipped to [0, 1], source). Rows of mentions not in
    this run (W103) or of KB ids not in `kb_ids` (W106) are dropped with one warning each; a
    repeated (mention_id, kb_id) pair is kept once, with its highest score (W105), so that an
    outside source adds at most 1 to a candidate, as every source does. Malformed files are E112.
    """
    separator = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        frame = pl.read_csv(path, separator=separator, schema_overrides={"mention_id": pl.String, "kb_id": pl.String})
    except FileNotFoundError:
        raise InputError("E108", path=path) from None
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        raise InputError("E112", path=path, line="?", detail=f"cannot be parsed as {'TSV' if separator == chr(9) else 'CSV'}: {str(exc).splitlines()[0]}; "
                                                          "write it with the header mention_id,kb_id,score and three columns a row") from None
    for column in ("mention_id", "kb_id", "score"):
        if column not in frame.columns:
            raise InputError("E112", path=path, line=1, detail=f"header lacks column '{column}'; give the header mention_id, kb_id, score")
    frame = frame.with_row_index("line", offset=2)
    score = frame["score"].cast(pl.Float64, strict=False)
    bad = frame.filter(score.is_null() | frame["kb_id"].is_null() | frame["mention_id"].is_null()).head(1)
    if not bad.is_empty():
        row = bad.row(0, named=True)
        raise InputError("E112", path=path, line=row["line"], detail=f"needs a mention_id, a kb_id and a numeric score, got {row}; fill in that row or remove it")
    unknown = frame.join(mentions.select("mention_id"), on="mention_id", how="anti")
    if unknown.height:
        # Outside triage often covers a larger mention set than this run: warned, not refused.
        warn(logger, "W103", path=path, count=unknown.height,
             example=f"{unknown['mention_id'][0]!r} on line {unknown['line'][0]}")
    unknown = frame.join(kb_ids, on="kb_id", how="anti")
    if unknown.height:
        warn(logger, "W106", path=path, count=unknown.height, line=unknown["line"][0], example=unknown["kb_id"][0])
    repeated = frame.filter(~pl.struct("mention_id", "kb_id").is_first_distinct())
    if repeated.height:
        first = repeated.row(0, named=True)
        warn(logger, "W105", path=path, count=repeated.height, line=first["line"],
             example=f"{first['mention_id']},{first['kb_id']}")
    return (frame.with_columns(score.alias("score")).join(mentions.select("mention_id"), on="mention_id", how="semi")
            .join(kb_ids, on="kb_id", how="semi")
            .group_by("mention_id", "kb_id").agg(pl.col("score").max())
            .select("mention_id", "kb_id", pl.col("score").clip(0, 1), pl.lit("external").alias("source")))


@dataclass(frozen=True)
class LearnedSources:
    """What the candidate sources take from the alias table and the encoder, not from the mentions:
    P(e|m) per key (`alias_priors`), the training surface forms with their keys and four-gram
    index (the fuzzy source matches them as it matches KB names), and the encoder's identity
    (the dense index's key). `xel-cli link` prepares them once per `Linker`, not per chunk;
    a part whose source is switched off is None."""

    priors: dict[str, pl.DataFrame] | None
    training_names: pl.DataFrame | None  # surface, kb_id and their keys
    training_keys: pl.Series | None  # distinct non-empty surface_roman, sorted: name i of `training_ngrams`
    training_ngrams: TantivyNameIndex | None
    encoder_identity: str | None

    @classmethod
    def prepare(cls, aliases: pl.DataFrame, triage: TriageConfig, encoder_config: EncoderConfig,
                encoder_identity: str | None = None, known_ids: pl.DataFrame | None = None) -> LearnedSources:
        """Build what `triage`'s switched-on sources need; `encoder_identity` when the caller has it.

        `known_ids` (kb_id): the KB's ids, when it may lack some of the alias table's (link against
        another KB): those ids are left out of the priors and training names, so they take no place
        in the fuzzy shortlist; priors keep their shares of every training mention of a string.
        Without it every id is kept, and `candidate_pieces` drops the KB's unknown ones at its end.
        """
        priors = alias_priors(aliases) if triage.use_priors else None
        if priors is not None and known_ids is not None:
            known = known_ids.select(pl.col("kb_id").alias("gold_kb_id"))
            priors = {key: table.join(known, on="gold_kb_id", how="semi") for key, table in priors.items()}
        names = keys = ngrams = None
        if triage.use_fuzzy:
            trained = aliases if known_ids is None else aliases.join(
                known_ids.select(pl.col("kb_id").alias("gold_kb_id")), on="gold_kb_id", how="semi")
            names = add_keys(trained.select(pl.col("mention").alias("surface"), pl.col("gold_kb_id").alias("kb_id")).unique(),
                             "surface")
            keys = names.select(pl.col("surface_roman").unique().sort()).filter(pl.col("surface_roman") != "")["surface_roman"]
            ngrams = name_ngrams(keys)
        if triage.use_dense and encoder_identity is None:
            from pipeline.encoders.encoder import encoder_identity as identity_of, resolve_encoder_path

            encoder_identity = identity_of(resolve_encoder_path(encoder_config.name))
        return cls(priors, names, keys, ngrams, encoder_identity if triage.use_dense else None)


def candidate_pieces(mentions: pl.DataFrame, aliases: pl.DataFrame, kb_names: KbNames, known_ids: pl.DataFrame,
                     triage: TriageConfig, encoder_config: EncoderConfig, index_root: Path, kb_fingerprint: str,
                     external: Path | None = None, encoder=None, learned: LearnedSources | None = None) -> list[pl.DataFrame]:
    """Candidates of every switched-on source, (mention_id, kb_id, score, source) each, KB ids only.

    `mentions` needs mention_id and mention; `aliases` is `alias_table` of the training
    mentions (the stage's own, or a trained linker's); `known_ids` (kb_id) the KB's ids;
    `learned`: `LearnedSources.prepare(aliases, triage, encoder_config)` when the caller
    calls this more than once (link, per chunk), else built here. The stage and `xel-cli
    link` both call this, so they propose the same candidates.
    """
    if learned is None:
        learned = LearnedSources.prepare(aliases, triage, encoder_config)
    keyed = add_keys(mentions, "mention")
    surfaces = kb_names.surfaces
    pieces: list[pl.DataFrame] = []
    if triage.use_priors:
        pieces.append(prior_candidates(keyed, aliases, learned.priors))
    if triage.use_kb_names:
        pieces.append(kb_name_candidates(keyed, surfaces))
    if triage.use_fuzzy:
        from_kb = fuzzy_candidates(keyed, surfaces, kb_names.roman_keys, kb_names.ngrams, triage.k, triage.fuzzy_min_score)
        # Training surface forms are matched too, from a small in-memory index (`LearnedSources`).
        from_training = fuzzy_candidates(keyed, learned.training_names, learned.training_keys, learned.training_ngrams,
                                         triage.k, triage.fuzzy_min_score)
        pieces.append(pl.concat([from_kb, from_training]).group_by("mention_id", "kb_id", "source").agg(pl.col("score").max()))
    if triage.use_dense:
        pieces.append(dense_candidates(keyed, surfaces, encoder_config, triage, index_root, kb_fingerprint, encoder,
                                       learned.encoder_identity))
    if external is not None:
        pieces.append(external_candidates(external, mentions, known_ids))
    if not pieces:
        pieces.append(pl.DataFrame(schema={"mention_id": pl.String, "kb_id": pl.String, "score": pl.Float64, "source": pl.String}))
    return [p.join(known_ids, on="kb_id", how="semi") for p in pieces]


def merge_candidates(pieces: list[pl.DataFrame], mentions: pl.DataFrame, k: int, oracle: bool) -> pl.DataFrame:
    """One ranked list per mention: scores summed over sources, top k, gold flagged."""
    rows = pl.concat([p.select("mention_id", "kb_id", pl.col("score").cast(pl.Float64), "source") for p in pieces])
    merged = (rows.group_by("mention_id", "kb_id")
              .agg(pl.col("score").sum(), pl.col("source").unique().sort().alias("sources"))
              .sort(["mention_id", "score", "kb_id"], descending=[False, True, False])
              .with_columns(pl.int_range(1, pl.len() + 1).over("mention_id").cast(pl.Int32).alias("rank"))
              .filter(pl.col("rank") <= k))
    gold = mentions.select("mention_id", "gold_kb_id")
    if oracle:
        linked = gold.filter(schema.linked_gold())
        missing = linked.join(merged.select("mention_id", pl.col("kb_id").alias("gold_kb_id")), on=["mention_id", "gold_kb_id"], how="anti")
        # The gold takes the last place of a full list, so the list keeps k entries.
        merged = merged.filter(~(pl.col("mention_id").is_in(missing["mention_id"].implode()) & (pl.col("rank") == k)))
        sizes = merged.group_by("mention_id").agg(pl.len().alias("n"))
        added = missing.join(sizes, on="mention_id", how="left").select(
            "mention_id", pl.col("gold_kb_id").alias("kb_id"), pl.lit(0.0).alias("score"),
            pl.lit(["oracle"]).cast(pl.List(pl.String)).alias("sources"),
            (pl.col("n").fill_null(0) + 1).cast(pl.Int32).alias("rank"))
        merged = pl.concat([merged.select(added.columns), added])
    flagged = merged.join(gold, on="mention_id", how="left").with_columns(
        pl.when(pl.col("gold_kb_id").is_null()).then(None).otherwise(pl.col("kb_id") == pl.col("gold_kb_id")).alias("is_gold"))
    return flagged.select(list(schema.CANDIDATES)).cast(schema.CANDIDATES).sort("mention_id", "rank")


def recall_report(mentions: pl.DataFrame, candidates: pl.DataFrame, k: int) -> pl.DataFrame:
    """Gold recall@n per language and split, over mentions whose gold is a KB entity."""
    gold_rank = candidates.filter(pl.col("is_gold")).group_by("mention_id").agg(pl.col("rank").min().alias("gold_rank"))
    counts = candidates.group_by("mention_id").agg(pl.len().alias("n_candidates"))
    table = (mentions.filter(pl.col("gold_kb_id").is_not_null())
             .join(gold_rank, on="mention_id", how="left").join(counts, on="mention_id", how="left")
             .with_columns((pl.col("gold_kb_id") == schema.NIL_ID).alias("is_nil"), pl.col("n_candidates").fill_null(0)))
    levels = [n for n in RECALL_AT if n <= k] + ([k] if k not in RECALL_AT else [])
    linked = ~pl.col("is_nil")
    aggregations = [pl.len().alias("mentions"), pl.col("is_nil").mean().alias("nil_share"),
                    pl.col("n_candidates").mean().alias("candidates_per_mention")]
    aggregations += [((pl.col("gold_rank") <= n) & linked).sum().truediv(linked.sum()).alias(f"recall@{n}") for n in levels]
    by_group = table.group_by("lang", "split").agg(aggregations)
    overall = table.select(pl.lit("all").alias("lang"), pl.lit("all").alias("split"), *aggregations)
    return pl.concat([by_group.sort("lang", "split"), overall])


def run(config: RunConfig, force: bool = False) -> StageResult:
    out_dir = config.stage_dir(STAGE)
    inputs = config.inputs
    input_paths = {name: getattr(inputs, name) for name in
                   ("kb", "mentions", "docs", "tac_train", "tac_dev", "tac_test", "tac_source", "candidates")
                   if getattr(inputs, name) is not None}
    for name, path in input_paths.items():
        if not path.exists():
            raise InputError("E108", path=path)
    fingerprints = {name: file_fingerprint(path) for name, path in input_paths.items()}
    if config.triage.use_dense:
        from pipeline.encoders.encoder import encoder_identity, resolve_encoder_path

        fingerprints["encoder"] = encoder_identity(resolve_encoder_path(config.encoder.name))
    settings = {"inputs": {k: v for k, v in to_dict(inputs).items() if k not in input_paths and v is not None},
                "triage": to_dict(config.triage)}
    if config.triage.use_dense:
        settings["encoder"] = {"max_name_tokens": config.encoder.max_name_tokens}
    stage_run = StageRun(out_dir, STAGE, STAGE_VERSION, settings, fingerprints, force)
    if stage_run.up_to_date:
        return stage_run.skipped()
    index_root = out_dir / "kb-index"
    stage_run.begin(index_root)

    mentions = load_mentions(inputs)
    logger.info("read %d mentions", mentions.height)
    entities_path = kb_entities(inputs.kb, index_root, fingerprints["kb"])
    with atomic_path(out_dir / "entities.parquet") as temp_path:
        shutil.copyfile(entities_path, temp_path)
    entities = pl.read_parquet(out_dir / "entities.parquet")
    entity_count = entities.height
    check_gold_in_kb(mentions, entities.lazy(), inputs.mentions)

    kb_names = names_index(entities, index_root, fingerprints["kb"])
    aliases = alias_table(mentions.filter(pl.col("split") == "train"))
    pieces = candidate_pieces(mentions, aliases, kb_names, entities.select("kb_id"), config.triage, config.encoder,
                              index_root, fingerprints["kb"], inputs.candidates)
    candidates = merge_candidates(pieces, mentions, config.triage.k, config.triage.oracle)

    write_parquet_atomic(mentions.drop("line").select(list(schema.MENTIONS) + ["named"]), out_dir / "mentions.parquet")
    write_parquet_atomic(candidates, out_dir / "candidates.parquet")
    report = recall_report(mentions, candidates, config.triage.k)
    write_json_atomic(out_dir / "report.json", {"recall": report.to_dicts()})
    counts = {"mentions": mentions.height, "entities": entity_count, "candidates": candidates.height}
    return stage_run.finish(counts, ["mentions.parquet", "entities.parquet", "candidates.parquet", "report.json"],
                            summary={"recall": report})
