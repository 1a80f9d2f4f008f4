"""Candidate generation as triage and `xel-cli link` both run it: every switched-on source
(`sources.py`), then one merged, ranked top-k list per mention. A candidate's score is the
sum of its sources' scores (each in [0, 1]); the oracle (the paper's Multi+Or) adds the gold
entity when missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.candidates.kb_index import KbIndex, name_ngrams
from pipeline.candidates.sources import (
    alias_priors,
    dense_candidates,
    external_candidates,
    fuzzy_candidates,
    kb_name_candidates,
    prior_candidates,
)
from pipeline.candidates.tantivy_index import TantivyNameIndex
from pipeline.core import schema
from pipeline.core.config import EncoderConfig, TriageConfig
from pipeline.core.progress import progress
from pipeline.core.textnorm import add_keys


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
    def prepare(
        cls,
        aliases: pl.DataFrame,
        triage: TriageConfig,
        encoder_config: EncoderConfig,
        encoder_identity: str | None = None,
        known_ids: pl.DataFrame | None = None,
    ) -> LearnedSources:
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
            trained = (
                aliases
                if known_ids is None
                else aliases.join(known_ids.select(pl.col("kb_id").alias("gold_kb_id")), on="gold_kb_id", how="semi")
            )
            names = add_keys(
                trained.select(pl.col("mention").alias("surface"), pl.col("gold_kb_id").alias("kb_id")).unique(),
                "surface",
            )
            keys = names.select(pl.col("surface_roman").unique().sort()).filter(pl.col("surface_roman") != "")[
                "surface_roman"
            ]
            ngrams = name_ngrams(keys)
        if triage.use_dense and encoder_identity is None:
            from pipeline.encoders.encoder import configured_identity

            encoder_identity = configured_identity(encoder_config)
        return cls(priors, names, keys, ngrams, encoder_identity if triage.use_dense else None)


# The sources that read the training labels (`LearnedSources`), and those that do not: cross-fitting
# (`crossfit.py`) runs the first per fold and the second once.
LEARNED_SOURCES = ("priors", "fuzzy")
LABEL_FREE_SOURCES = ("KB names", "dense", "external")


def candidate_pieces(
    mentions: pl.DataFrame,
    kb: KbIndex,
    learned: LearnedSources,
    triage: TriageConfig,
    encoder_config: EncoderConfig,
    external: Path | None = None,
    encoder=None,
    only: tuple[str, ...] | None = None,
) -> list[pl.DataFrame]:
    """Candidates of every switched-on source, (mention_id, kb_id, score, source) each, KB ids only.

    `mentions` needs mention_id and mention; `kb` is the KB's indexes; `learned` is
    `LearnedSources.prepare` of the training mentions' alias table (the stage's own, or a
    trained linker's: link prepares it once, not per chunk); `encoder`, when the caller has
    it loaded, embeds for the dense source. The stage and `xel-cli link` both call this, so
    they propose the same candidates. `only`: run just these of the switched-on sources
    (`LEARNED_SOURCES` or `LABEL_FREE_SOURCES`; None: all).
    """
    keyed = add_keys(mentions, "mention")
    kb_names, known_ids = kb.names, kb.known_ids
    surfaces = kb_names.surfaces

    def fuzzy() -> pl.DataFrame:
        from_kb = fuzzy_candidates(
            keyed, surfaces, kb_names.roman_keys, kb_names.ngrams, triage.k, triage.fuzzy_min_score
        )
        # Training surface forms are matched too, from a small in-memory index (`LearnedSources`).
        from_training = fuzzy_candidates(
            keyed,
            learned.training_names,
            learned.training_keys,
            learned.training_ngrams,
            triage.k,
            triage.fuzzy_min_score,
        )
        return pl.concat([from_kb, from_training]).group_by("mention_id", "kb_id", "source").agg(pl.col("score").max())

    sources = {
        "priors": (triage.use_priors, lambda: prior_candidates(keyed, None, learned.priors)),
        "KB names": (triage.use_kb_names, lambda: kb_name_candidates(keyed, surfaces)),
        "fuzzy": (triage.use_fuzzy, fuzzy),
        "dense": (
            triage.use_dense,
            lambda: dense_candidates(keyed, kb, encoder_config, triage, encoder, learned.encoder_identity),
        ),
        "external": (external is not None, lambda: external_candidates(external, mentions, known_ids)),
    }
    steps = [(name, step) for name, (on, step) in sources.items() if on and (only is None or name in only)]
    pieces: list[pl.DataFrame] = []
    with progress(len(steps), "triage: candidate sources", "sources", delay=2.0) as counter:
        for name, step in steps:  # a log line (redirected) or bar (terminal) names the source at work
            counter.set_postfix_str(name)
            pieces.append(step())
            counter.update(1)
    if not pieces:
        pieces.append(
            pl.DataFrame(schema={"mention_id": pl.String, "kb_id": pl.String, "score": pl.Float64, "source": pl.String})
        )
    return [p.join(known_ids, on="kb_id", how="semi") for p in pieces]


def merge_candidates(pieces: list[pl.DataFrame], mentions: pl.DataFrame, k: int, oracle: bool) -> pl.DataFrame:
    """One ranked list per mention: scores summed over sources, top k, gold flagged."""
    rows = pl.concat([p.select("mention_id", "kb_id", pl.col("score").cast(pl.Float64), "source") for p in pieces])
    merged = (
        rows.group_by("mention_id", "kb_id")
        .agg(pl.col("score").sum(), pl.col("source").unique().sort().alias("sources"))
        .sort(["mention_id", "score", "kb_id"], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over("mention_id").cast(pl.Int32).alias("rank"))
        .filter(pl.col("rank") <= k)
    )
    gold = mentions.select("mention_id", "gold_kb_id")
    if oracle:
        linked = gold.filter(schema.linked_gold())
        missing = linked.join(
            merged.select("mention_id", pl.col("kb_id").alias("gold_kb_id")),
            on=["mention_id", "gold_kb_id"],
            how="anti",
        )
        # The gold takes the last place of a full list, so the list keeps k entries.
        merged = merged.filter(~(pl.col("mention_id").is_in(missing["mention_id"].implode()) & (pl.col("rank") == k)))
        sizes = merged.group_by("mention_id").agg(pl.len().alias("n"))
        added = missing.join(sizes, on="mention_id", how="left").select(
            "mention_id",
            pl.col("gold_kb_id").alias("kb_id"),
            pl.lit(0.0).alias("score"),
            pl.lit(["oracle"]).cast(pl.List(pl.String)).alias("sources"),
            (pl.col("n").fill_null(0) + 1).cast(pl.Int32).alias("rank"),
        )
        merged = pl.concat([merged.select(added.columns), added])
    flagged = merged.join(gold, on="mention_id", how="left").with_columns(
        pl.when(pl.col("gold_kb_id").is_null())
        .then(None)
        .otherwise(pl.col("kb_id") == pl.col("gold_kb_id"))
        .alias("is_gold")
    )
    return flagged.select(list(schema.CANDIDATES)).cast(schema.CANDIDATES).sort("mention_id", "rank")
