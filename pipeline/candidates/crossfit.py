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

Translations of one document are one document here: ids that differ only in the language tag
(`meantime:en:X`, `meantime:es:X`; `demo-en-d01`, `demo-es-d01`) fall in one fold, since a Spanish
mention could otherwise find its gold through the English mention it translates.
"""

from __future__ import annotations

import functools
import re
import zlib

import polars as pl

from pipeline.candidates.generate import LABEL_FREE_SOURCES, LEARNED_SOURCES, LearnedSources, candidate_pieces
from pipeline.candidates.kb_index import KbIndex
from pipeline.core.config import EncoderConfig, TriageConfig
from pipeline.model.aliases import alias_table


def document_group(mentions: pl.DataFrame) -> pl.Series:
    """Per mention, its document's id without its language tag: every whole-token occurrence of the
    mention's lang in doc_id, in any case and with its region or script subtags (`en`, `EN`, `en-US`,
    `zh_Hant`), is removed, so `meantime:en:X` and `meantime:es:X`, `demo-en-d01` and `demo-es-d01`,
    `news:en-US:7` and `news:es-MX:7` each make one group. mentions: doc_id, lang (as read: lowercase)."""
    groups = [
        # the separators the tag stood between become one (`meantime::X` -> `meantime:X`)
        _REPEATED_SEPARATOR.sub(r"\1", _language_tag(lang).sub("", str(doc_id))) if lang else str(doc_id)
        for doc_id, lang in zip(mentions["doc_id"].to_list(), mentions["lang"].to_list())
    ]
    return pl.Series("group", groups, dtype=pl.String)


_REPEATED_SEPARATOR = re.compile(r"([:/_.-])[:/_.-]+")


@functools.lru_cache(maxsize=None)
def _language_tag(lang: str) -> re.Pattern:
    """`lang` as a whole token (not inside a longer word or number), with any BCP 47 region (`-US`,
    `_419`) or script (`-Hant`) subtags after it, in any case."""
    subtags = r"(?:[-_](?:[A-Za-z]{4}|[A-Za-z]{2}|[0-9]{3}))*"
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(lang)}{subtags}(?![A-Za-z0-9])", re.IGNORECASE)


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

    def learned_pieces(part: pl.DataFrame, sources: LearnedSources) -> list[pl.DataFrame]:
        return candidate_pieces(part, kb, sources, triage, encoder_config, external, encoder, LEARNED_SOURCES)

    # The sources that read no label run once over every mention; only the learned ones run per fold.
    pieces = candidate_pieces(mentions, kb, learned, triage, encoder_config, external, encoder, LABEL_FREE_SOURCES)
    others = mentions.filter(fold == -1)
    if others.height:
        pieces += learned_pieces(others, learned)
    for number in range(triage.crossfit_folds):
        inside = mentions.filter(fold == number)
        if inside.is_empty():
            continue
        labels = alias_table(mentions.filter((fold >= 0) & (fold != number)))
        pieces += learned_pieces(
            inside, LearnedSources.prepare(labels, triage, encoder_config, learned.encoder_identity)
        )
    return pieces
