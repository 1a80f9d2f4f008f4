"""How the reader's input sequences are built: the mention marked in its context, a NIL option, the candidates.

One sequence per mention (the listwise form of ReLiK, Orlando et al. 2024):

    [CLS] left context <m> mention </m> right context [SEP] <nil> <e> cand1 [SEP]? ... <e> candK [SEP]

where each candidate is "name | type | description" cut to an equal share of what the
context leaves of `max_seq_tokens`. The reader scores slot 0 (the `<nil>` token) and each
candidate's `<e>` token. The markers are special tokens added to the tokenizer
(`MARKERS`); the encoder's embedding matrix grows by as many rows.

Everything here works on token ids; nothing knows about stages or files, so the rerank
stage, evaluate and link build the same sequences for the same mentions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl
import torch

from pipeline.core.schema import TRIAGE_SOURCES
from pipeline.encoders.encoder import mention_window, token_span

# Mention start / end, the NIL option and the candidate marker, added as special tokens.
MARKERS = ("<xel:m>", "</xel:m>", "<xel:nil>", "<xel:e>")
NIL_SLOT = 0  # slot 0 of every mention's scores is the NIL option; candidates follow in order
# A slot's triage evidence (`[rerank] triage_evidence`): 1 for a candidate (0 for the NIL option and
# padding), triage's summed score, then one flag per source in TRIAGE_SOURCES' order.
EVIDENCE_WIDTH = 2 + len(TRIAGE_SOURCES)


@dataclass(frozen=True)
class Layout:
    """Sequence budget: sub-words in all (max_seq_tokens), of them at most max_context_tokens of context;
    `form`: "listwise" (one sequence per mention holding every candidate) or "pairwise" (one per
    candidate, BLINK's cross-encoder, and one with the NIL option alone)."""

    max_seq_tokens: int
    max_context_tokens: int
    top_k: int
    form: str = "listwise"


class Reading(NamedTuple):
    """One mention's sequences and where its scores are: `picks` holds (sequence, slot) of the NIL option,
    then of each candidate in `kept` (its KB ids, in order); `evidence`: each kept candidate's triage
    evidence (EVIDENCE_WIDTH values), None for a reader without it."""

    sequences: list[list[int]]
    slots: list[list[int]]
    mentions: list[tuple[int, int]]
    picks: list[tuple[int, int]]
    kept: list[str]
    evidence: list[list[float]] | None = None

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.sequences)


def reading(
    context: list[int],
    candidates: list[list[int]],
    kept: list[str],
    layout: Layout,
    marks: Specials,
    evidence: list[list[float]] | None = None,
) -> Reading:
    """The `Reading` of one mention: one `assemble`d sequence (listwise), or (pairwise) one with the NIL
    option alone and one per candidate, each candidate scored at its own sequence's slot 1; `evidence`:
    each candidate's triage evidence (`evidence_table`'s vectors), or None."""
    if layout.form == "listwise":
        ids, slots, mention = assemble(context, candidates, layout, marks)
        return Reading([ids], [slots], [mention], [(0, slot) for slot in range(len(slots))], kept, evidence)
    parts = [assemble(context, [], layout, marks)] + [
        assemble(context, [tokens], layout, marks) for tokens in candidates
    ]
    picks = [(0, NIL_SLOT)] + [(number, 1) for number in range(1, len(parts))]
    sequences, slots, mentions = ([part[i] for part in parts] for i in range(3))
    return Reading(sequences, slots, mentions, picks, kept, evidence)


@dataclass(frozen=True)
class Specials:
    """Token ids the sequences are assembled from (`specials(tokenizer)`)."""

    cls: int
    sep: int
    pad: int
    mention_start: int
    mention_end: int
    nil: int
    entity: int


def add_markers(tokenizer) -> int:
    """Add `MARKERS` to `tokenizer` as special tokens (a no-op when it has them); returns its new size."""
    missing = [marker for marker in MARKERS if marker not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return len(tokenizer)


def specials(tokenizer) -> Specials:
    """The ids of [CLS]/[SEP]/[PAD] (or <s>/</s>/<pad>) and of the markers; KeyError when markers are missing."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[marker] for marker in MARKERS]
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return Specials(int(cls), int(sep), int(tokenizer.pad_token_id or 0), *ids)


def context_tokens(tokenizer, mentions: pl.DataFrame, layout: Layout, marks: Specials) -> list[list[int]]:
    """Per mention, `<m> mention </m>` in a window of at most `max_context_tokens` context sub-words.

    mentions needs context, start, end (character offsets into context, end exclusive).
    The window is centred on the mention (`encoder.mention_window`, as encode's is).
    """
    encoded = tokenizer(
        mentions["context"].fill_null("").to_list(), add_special_tokens=False, return_offsets_mapping=True
    )
    out = []
    for ids, offsets, start, end in zip(
        encoded["input_ids"], encoded["offset_mapping"], mentions["start"].to_list(), mentions["end"].to_list()
    ):
        if not ids:
            out.append([marks.mention_start, marks.mention_end])
            continue
        first, last = token_span(np.asarray(offsets).reshape(-1, 2), start, end)
        window_start, first, last = mention_window(len(ids), first, last, layout.max_context_tokens)
        window = ids[window_start : window_start + layout.max_context_tokens]
        out.append(window[:first] + [marks.mention_start] + window[first:last] + [marks.mention_end] + window[last:])
    return out


def entity_texts(entities: pl.DataFrame) -> pl.Series:
    """ "name | type | description" of each entity (entities: name, type, description; nulls left out)."""
    parts = [pl.col("name").fill_null(""), pl.col("type"), pl.col("description")]
    return entities.select(pl.concat_str(parts, separator=" | ", ignore_nulls=True).alias("text"))["text"]


def entity_tokens(tokenizer, entities: pl.DataFrame, max_tokens: int) -> dict[str, list[int]]:
    """kb_id -> sub-word ids of the entity's text (`entity_texts`), at most `max_tokens` of them."""
    encoded = tokenizer(
        entity_texts(entities).to_list(), add_special_tokens=False, truncation=True, max_length=max_tokens
    )["input_ids"]
    return dict(zip(entities["kb_id"].to_list(), encoded))


def assemble(
    context: list[int], candidates: list[list[int]], layout: Layout, marks: Specials
) -> tuple[list[int], list[int], tuple[int, int]]:
    """(token ids, slot positions, the two mention markers' positions) of one mention's sequence; slots[0]
    is the NIL option, then one per candidate.

    Each candidate gets an equal share of what the context leaves of max_seq_tokens
    (its marker included), so a sequence never exceeds max_seq_tokens.
    """
    ids = [marks.cls, *context, marks.sep, marks.nil]
    slots = [len(ids) - 1]
    mention = (1 + context.index(marks.mention_start), 1 + context.index(marks.mention_end))
    if candidates:
        share = max((layout.max_seq_tokens - len(ids) - 1) // len(candidates) - 1, 1)
        for tokens in candidates:
            slots.append(len(ids))
            ids += [marks.entity, *tokens[:share]]
    ids.append(marks.sep)
    return ids, slots, mention


class ReaderBatch(NamedTuple):
    """`Reader.forward`'s inputs for B sequences of at most T tokens and S = top_k + 1 slots (NIL first).

    input_ids, attention_mask: (B, T); slot_start, slot_end: (B, S) token span [start, end) of
    each slot (the NIL token; a candidate's marker and text), padded slots (0, 1); slot_mask:
    (B, S) True for real slots; mention: (B, 2) the two mention markers' positions; context:
    (B, 2) the span of the context (markers included); evidence: (B, S, EVIDENCE_WIDTH) each slot's
    triage evidence (zeros for NIL and padding), or None for a reader without it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    slot_start: torch.Tensor
    slot_end: torch.Tensor
    slot_mask: torch.Tensor
    mention: torch.Tensor
    context: torch.Tensor
    evidence: torch.Tensor | None = None


def collate(
    sequences: list[list[int]],
    slots: list[list[int]],
    mentions: list[tuple[int, int]],
    width: int,
    pad_id: int,
    device: torch.device,
) -> ReaderBatch:
    """The padded `ReaderBatch` of sequences built by `assemble` (their ids, slots and mention markers)."""
    length = max(len(s) for s in sequences)
    input_ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    attention = np.zeros((len(sequences), length), dtype=np.int64)
    starts = np.zeros((len(sequences), width), dtype=np.int64)
    ends = np.ones((len(sequences), width), dtype=np.int64)
    slot_mask = np.zeros((len(sequences), width), dtype=bool)
    context = np.zeros((len(sequences), 2), dtype=np.int64)
    for row, (ids, slot) in enumerate(zip(sequences, slots)):
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
        starts[row, : len(slot)] = slot
        ends[row, : len(slot)] = slot[1:] + [len(ids) - 1]  # a slot runs to the next one, or to the final [SEP]
        slot_mask[row, : len(slot)] = True
        context[row] = (1, slot[0] - 1)  # [CLS] context [SEP] <nil>
    arrays = (
        input_ids,
        attention,
        starts,
        ends,
        slot_mask,
        np.asarray(mentions, dtype=np.int64).reshape(-1, 2),
        context,
    )
    return ReaderBatch(*(torch.from_numpy(array).to(device) for array in arrays))


def collate_readings(
    readings: list[Reading], width: int, pad_id: int, device: torch.device
) -> tuple[ReaderBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the `ReaderBatch` of every sequence of `readings`, and per mention (B, width) the sequence row and
    slot of each of its scores with their mask): `Reader.forward`'s (N, W) logits indexed
    [rows, slots] are the mentions' (B, width) logits (NIL first)."""
    flat = [
        (ids, slots, mention)
        for item in readings
        for ids, slots, mention in zip(item.sequences, item.slots, item.mentions)
    ]
    batch = collate(
        [f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat], max(len(f[1]) for f in flat), pad_id, device
    )
    rows = np.zeros((len(readings), width), dtype=np.int64)
    slots = np.zeros((len(readings), width), dtype=np.int64)
    mask = np.zeros((len(readings), width), dtype=bool)
    with_evidence = readings[0].evidence is not None
    evidence = np.zeros((*batch.slot_mask.shape, EVIDENCE_WIDTH), dtype=np.float32) if with_evidence else None
    offset = 0
    for row, item in enumerate(readings):
        for column, (sequence, slot) in enumerate(item.picks):
            rows[row, column], slots[row, column], mask[row, column] = offset + sequence, slot, True
            if with_evidence and column > 0:  # column 0 is the NIL option: no evidence
                evidence[offset + sequence, slot] = item.evidence[column - 1]
        offset += len(item.sequences)
    if with_evidence:
        batch = batch._replace(evidence=torch.from_numpy(evidence).to(device))
    return batch, *(torch.from_numpy(array).to(device) for array in (rows, slots, mask))


def top_candidates(candidates: pl.DataFrame, top_k: int) -> pl.DataFrame:
    """Each mention's `top_k` candidates by `order` (higher first; ties and nulls by triage rank).

    candidates needs mention_id, kb_id, rank (triage's) and order (the ranker's score, or
    minus the triage rank). Returns mention_id, kb_id, slot (1..top_k, the reader's order), and
    triage_score and sources when `candidates` has them (`candidate_order` keeps them).
    """
    evidence = [name for name in ("triage_score", "sources") if name in candidates.columns]
    return (
        candidates.sort("mention_id", "order", "rank", descending=[False, True, False], nulls_last=True)
        .with_columns(pl.int_range(1, pl.len() + 1).over("mention_id").alias("slot"))
        .filter(pl.col("slot") <= top_k)
        .select("mention_id", "kb_id", pl.col("slot").cast(pl.Int32), *evidence)
    )


def evidence_table(top: pl.DataFrame) -> dict[str, dict[str, list[float]]]:
    """mention_id -> kb_id -> the candidate's triage evidence, EVIDENCE_WIDTH values (1, triage's summed
    score, a flag per source in TRIAGE_SOURCES' order), of `top` (`top_candidates` with triage_score
    and sources)."""
    values = top.select(
        "mention_id",
        "kb_id",
        pl.concat_list(
            pl.lit(1.0, dtype=pl.Float32),
            pl.col("triage_score").cast(pl.Float32).fill_null(0.0),
            *[pl.col("sources").list.contains(source).fill_null(False).cast(pl.Float32) for source in TRIAGE_SOURCES],
        ).alias("evidence"),
    )
    table: dict[str, dict[str, list[float]]] = {}
    for mention_id, kb_id, vector in values.iter_rows():
        table.setdefault(mention_id, {})[kb_id] = vector
    return table


def candidate_order(candidates: pl.DataFrame, ranker_scores: pl.DataFrame | None) -> pl.DataFrame:
    """candidates (mention_id, kb_id, rank: triage's) with `order`, what `top_candidates` sorts by: the
    ranker's score (ranker_scores: mention_id, kb_id, score; a candidate it did not score gets null,
    read after the scored ones) or, with ranker_scores None (a reader on triage's order), minus the rank.

    The rerank stage (training, and scoring dev and test) and link (`LoadedReader.order`) both
    order a reader's candidates here, so link reads the candidates the stage read, in its slots.
    Triage's score (as triage_score) and sources come along when `candidates` has them, for a reader
    with `triage_evidence`."""
    evidence = [pl.col("score").alias("triage_score")] if "score" in candidates.columns else []
    evidence += ["sources"] if "sources" in candidates.columns else []
    triage = candidates.select("mention_id", "kb_id", "rank", *evidence)
    if ranker_scores is None:
        return triage.with_columns((-pl.col("rank")).cast(pl.Float64).alias("order"))
    ranked = ranker_scores.select("mention_id", "kb_id", pl.col("score").cast(pl.Float64).alias("order"))
    return triage.join(ranked, on=["mention_id", "kb_id"], how="left")
