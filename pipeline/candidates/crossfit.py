"""Cross-fitted candidates for the training split: no training mention finds its gold through its own label.

Two candidate sources learn from the training labels: the alias prior P(e|m) and the fuzzy
source's training surface forms (`LearnedSources`). A training mention's own label is in both,
so its gold is always proposed, by the prior with the mention's own count. A dev or test
mention gets no such help. The ranker and the reader, trained on the first and applied to the
second, then learn that "the prior proposes it" means "it is the gold", and that a mention whose
candidates have no prior is NIL. On MEANTIME every training gold had the prior source, against
63-65 % of dev and test golds.

Cross-fitting, as out-of-fold features are built for stacking (Wolpert 1992) and double machine
learning (Chernozhukov et al. 2018): the training documents fall into `folds` folds, and each
fold's mentions get candidates from the labels of the other folds only. Dev and test mentions
(and `xel-cli link`) still use every training label.

Translations of one document are one document here: ids that differ only in the language
segment (`meantime:en:X`, `meantime:es:X`) fall in one fold, since a Spanish mention could
otherwise find its gold through the English mention it translates.
"""

from __future__ import annotations

import zlib

import polars as pl

from pipeline.candidates.generate import LearnedSources, candidate_pieces
from pipeline.candidates.kb_index import KbIndex
from pipeline.core.config import EncoderConfig, TriageConfig
from pipeline.model.aliases import alias_table


def document_group(mentions: pl.DataFrame) -> pl.Series:
    """Per mention, its document's id without the language segment: doc_id's `:`-separated parts, less
    the one equal to the mention's lang (`meantime:en:X` -> `meantime:X`). mentions: doc_id, lang."""
    groups = [
        ":".join(part for part in str(doc_id).split(":") if part != lang)
        for doc_id, lang in zip(mentions["doc_id"].to_list(), mentions["lang"].to_list())
    ]
    return pl.Series("group", groups, dtype=pl.String)


def training_folds(mentions: pl.DataFrame, folds: int) -> pl.Series:
    """Per mention, its fold in 0..folds-1 for a training mention, -1 for any other split.

    A fold is the CRC-32 of the document group (`document_group`) modulo `folds`: the same document
    always falls in the same fold, whatever else the corpus holds. mentions: doc_id, lang, split.
    """
    group = document_group(mentions)
    fold = pl.Series("fold", [zlib.crc32(g.encode("utf-8")) % folds for g in group.to_list()], dtype=pl.Int64)
    return pl.select(pl.when(mentions["split"] == "train").then(fold).otherwise(-1).alias("fold"))["fold"]


def crossfit_pieces(
    mentions: pl.DataFrame,
    kb: KbIndex,
    learned: LearnedSources,
    triage: TriageConfig,
    encoder_config: EncoderConfig,
    external=None,
    encoder=None,
) -> list[pl.DataFrame]:
    """`candidate_pieces` of every mention, each training fold's from the other folds' labels.

    `learned` is `LearnedSources.prepare` of every training label: what dev and test mentions get.
    mentions: as `candidate_pieces` wants them, with doc_id, lang, split and gold_kb_id.
    triage.crossfit_folds (>= 2) sets the folds. Returns the sources' frames of every part, which
    `merge_candidates` concatenates.
    """
    fold = training_folds(mentions, triage.crossfit_folds)
    pieces = []
    others = mentions.filter(fold == -1)
    if others.height:
        pieces += candidate_pieces(others, kb, learned, triage, encoder_config, external, encoder)
    for number in range(triage.crossfit_folds):
        inside = mentions.filter(fold == number)
        if inside.is_empty():
            continue
        labels = alias_table(mentions.filter((fold >= 0) & (fold != number)))
        fold_learned = LearnedSources.prepare(labels, triage, encoder_config, learned.encoder_identity)
        pieces += candidate_pieces(inside, kb, fold_learned, triage, encoder_config, external, encoder)
    return pieces
