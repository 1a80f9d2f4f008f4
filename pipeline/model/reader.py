"""The reader: a fine-tuned transformer that reads a mention in its context with all its candidates at once.

Beyond the paper (docs/reader.md). The paper's ranker compares vectors of mention and
entity computed apart; the reader reads one sequence holding the mention, marked in its
context, a "none of the above" option and the top candidates' names, types and
descriptions (`reader_inputs`), the listwise form of ReLiK's reader. The mention's
representation is matched against the hidden state of the NIL token and of each
candidate's marker token (`Reader`); a softmax
over NIL + candidates gives each a probability, trained with cross-entropy against the
gold's slot (NIL for NIL mentions and for linked ones whose gold was hidden).

A saved reader is a folder (`save_reader`): the fine-tuned encoder and its tokenizer
(with the markers) as `save_pretrained` writes them, the projections (`head.pt`) and
`reader.json` (layout, settings, provenance). The rerank stage writes it; evaluate,
the model folder and link read it with `load_reader` and score with `score_mentions`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.core.errors import CacheError, ConfigError
from pipeline.core.io import crash_point, default_permissions, failed_writes
from pipeline.model import reader_inputs
from pipeline.model.reader_inputs import Layout, ReaderBatch, Specials

logger = logging.getLogger(__name__)

HEAD = "head.pt"
READER_JSON = "reader.json"
FORMAT_VERSION = 1
# Width of the hidden layer of the network that scores a slot's triage evidence (`Reader`).
EVIDENCE_HIDDEN = 32
# reader_scores.parquet (the rerank stage writes it, evaluate reads it): one row per (mention,
# candidate the reader saw), SCORES_SCHEMA's columns.
SCORES_FILE = "reader_scores.parquet"
# The columns the reader adds to evaluate's and link's predictions (`reader_predictions`).
PREDICTION_COLUMNS = ("reader_kb_id", "reader_score", "reader_nil_score")
SCORES_SCHEMA = {
    "mention_id": pl.String,
    "kb_id": pl.String,
    "slot": pl.Int32,
    "score": pl.Float32,
    "nil_score": pl.Float32,
}


class Reader(torch.nn.Module):
    """A transformer encoder and a bilinear match between the mention and each slot (NIL, candidates).

    As ReLiK's entity-linking reader does, the mention's representation is compared by dot
    product with each slot's: the mention's is its two markers' hidden states (mean) plus
    its context's (mean over the context span), each projected; a slot's is the projected
    mean of its tokens' hidden states (the `<nil>` token; a candidate's marker, name, type
    and description). Every token attends to the whole sequence, so the candidates are read
    in the mention's context and beside each other.

    With `evidence_width` > 0 (`[rerank] triage_evidence`) a small network adds a learned score of
    each slot's triage evidence (`reader_inputs.EVIDENCE_WIDTH` values) to its logit, as ReFinED
    (Ayoola et al. 2022) adds the mention-entity prior to its entity scores. Its last layer starts
    at zero, so an untrained reader scores as one without evidence.
    """

    def __init__(self, encoder: torch.nn.Module, evidence_width: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.mention_projection = torch.nn.Linear(hidden, hidden)
        self.context_projection = torch.nn.Linear(hidden, hidden)
        self.slot_projection = torch.nn.Linear(hidden, hidden)
        # Start as the plain dot product of the encoder's states (markers + context against each slot), so
        # the first steps refine a sensible match instead of learning one from random projections.
        for projection in (self.mention_projection, self.context_projection, self.slot_projection):
            torch.nn.init.eye_(projection.weight)
            torch.nn.init.zeros_(projection.bias)
        self.evidence_score = None
        if evidence_width:
            self.evidence_score = torch.nn.Sequential(
                torch.nn.Linear(evidence_width, EVIDENCE_HIDDEN), torch.nn.ReLU(), torch.nn.Linear(EVIDENCE_HIDDEN, 1)
            )
            torch.nn.init.zeros_(self.evidence_score[-1].weight)
            torch.nn.init.zeros_(self.evidence_score[-1].bias)

    @property
    def head(self) -> torch.nn.ModuleList:
        """What sits on top of the encoder (trained at `rerank.head_learning_rate`): the projections and,
        with triage evidence, its network."""
        parts = [self.mention_projection, self.context_projection, self.slot_projection]
        return torch.nn.ModuleList(parts + ([self.evidence_score] if self.evidence_score is not None else []))

    def forward(self, batch: ReaderBatch) -> torch.Tensor:
        """Logits (B, S) of each sequence's S slots (NIL, then candidates), padded slots at -inf (`ReaderBatch`).

        `read` turns them into each mention's logits (one sequence per mention, or per candidate).
        """
        hidden = self.encoder(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state  # (B, T, H)
        width = hidden.shape[-1]
        sums = torch.nn.functional.pad(
            hidden.float().cumsum(dim=1), (0, 0, 1, 0)
        )  # (B, T + 1, H): sums[t] = tokens < t

        def span_mean(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:  # (B, N) spans -> (B, N, H)
            total = sums.gather(1, end[..., None].expand(-1, -1, width)) - sums.gather(
                1, start[..., None].expand(-1, -1, width)
            )
            return total / (end - start).clamp(min=1)[..., None]

        markers = hidden.float().gather(1, batch.mention[..., None].expand(-1, -1, width)).mean(dim=1)  # (B, H)
        context = span_mean(batch.context[:, :1], batch.context[:, 1:]).squeeze(1)  # (B, H)
        query = self.mention_projection(markers) + self.context_projection(context)  # (B, H)
        slots = self.slot_projection(span_mean(batch.slot_start, batch.slot_end))  # (B, S, H)
        logits = torch.einsum("bh,bsh->bs", query, slots) / width**0.5  # (B, S)
        if self.evidence_score is not None:
            if batch.evidence is None:
                raise ValueError("this reader reads triage evidence, and the batch has none")
            logits = logits + self.evidence_score(batch.evidence.float()).squeeze(-1)
        return logits.masked_fill(~batch.slot_mask, float("-inf"))


def read(
    reader: torch.nn.Module, readings: list[reader_inputs.Reading], width: int, marks: Specials, device: torch.device
) -> torch.Tensor:
    """Each mention's logits (B, width): NIL, then its candidates in order; -inf where it has fewer.

    `reader` is a Reader or DistributedDataParallel around one.
    """
    batch, rows, slots, mask = reader_inputs.collate_readings(readings, width, marks.pad, device)
    flat = reader(batch)  # (N, W) over every sequence of the batch
    return flat[rows, slots].masked_fill(~mask, float("-inf"))


@dataclass
class ReaderExamples:
    """Mentions ready to be read: context ids (markers in), candidate KB ids in slot order, gold (or None),
    and how their sequences are laid out (`layout`) from which special tokens (`marks`).

    entity_tokens maps every candidate's KB id to its text's sub-word ids; `evidence`, per mention, each
    candidate's triage evidence by KB id (`reader_inputs.evidence_table`), None for a reader without it.
    """

    mention_ids: list[str]
    contexts: list[list[int]]
    candidates: list[list[str]]
    gold: list[str | None]
    entity_tokens: dict[str, list[int]]
    layout: Layout
    marks: Specials
    evidence: list[dict[str, list[float]]] | None = None

    def reading(self, index: int, hide: str | None = None, shuffle: int | None = None) -> reader_inputs.Reading:
        """The `reader_inputs.Reading` of mention `index`, without candidate `hide` (a hidden gold); with
        `shuffle` (a seed), its candidates in that seed's random order instead of the given one."""
        kept = [kb_id for kb_id in self.candidates[index] if kb_id != hide]
        if shuffle is not None:
            kept = [kept[i] for i in np.random.default_rng(shuffle).permutation(len(kept))]
        evidence = None if self.evidence is None else [self.evidence[index][k] for k in kept]
        return reader_inputs.reading(
            self.contexts[index], [self.entity_tokens[k] for k in kept], kept, self.layout, self.marks, evidence
        )

    def subset(self, rows: Sequence[int], with_gold: bool = True) -> "ReaderExamples":
        """The examples of `rows` (indices), in that order; without their gold when `with_gold` is false."""
        gold = [self.gold[r] for r in rows] if with_gold else [None] * len(rows)
        return dataclasses.replace(
            self,
            mention_ids=[self.mention_ids[r] for r in rows],
            contexts=[self.contexts[r] for r in rows],
            candidates=[self.candidates[r] for r in rows],
            gold=gold,
            evidence=None if self.evidence is None else [self.evidence[r] for r in rows],
        )


def build_examples(
    tokenizer,
    mentions: pl.DataFrame,
    top: pl.DataFrame,
    entities: pl.DataFrame,
    layout: Layout,
    with_evidence: bool = False,
) -> ReaderExamples:
    """Examples of `mentions` (mention_id, context, start, end, optional gold_kb_id) against `top`
    (`reader_inputs.top_candidates`: mention_id, kb_id, slot; with triage_score and sources for
    `with_evidence`) with entity texts from `entities` (kb_id, name, type, description)."""
    marks = reader_inputs.specials(tokenizer)
    grouped = top.sort("mention_id", "slot").group_by("mention_id", maintain_order=True).agg("kb_id")
    lists = mentions.select("mention_id").join(grouped, on="mention_id", how="left")["kb_id"].to_list()
    wanted = entities.filter(pl.col("kb_id").is_in(top["kb_id"].unique().implode()))
    gold = mentions["gold_kb_id"].to_list() if "gold_kb_id" in mentions.columns else [None] * mentions.height
    evidence = None
    if with_evidence:
        table = reader_inputs.evidence_table(top)
        evidence = [table.get(mention_id, {}) for mention_id in mentions["mention_id"].to_list()]
    return ReaderExamples(
        mentions["mention_id"].to_list(),
        reader_inputs.context_tokens(tokenizer, mentions, layout, marks),
        [kb_ids or [] for kb_ids in lists],
        gold,
        reader_inputs.entity_tokens(tokenizer, wanted, layout.max_seq_tokens),
        layout,
        marks,
        evidence,
    )


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """torch.autocast's dtype for a `[rerank] precision` setting, resolved as the encoder's is
    (`encoders.precision.Precision`: auto = bf16 on CUDA and on CPUs with native bf16, else fp32)."""
    from pipeline.encoders.precision import Precision

    return Precision.resolve(precision, device.type, where="[rerank]").autocast_dtype


@torch.no_grad()
def score_mentions(
    reader: Reader, examples: ReaderExamples, device: torch.device, precision: str = "auto", batch_mentions: int = 32
) -> pl.DataFrame:
    """The reader's probabilities, one row per (mention, candidate): `SCORES_SCHEMA`.

    score: the candidate's softmax probability over NIL + the mention's candidates;
    nil_score: the NIL option's (the same on every row of a mention). Mentions without
    candidates get no row (their decision is NIL). Sequences are read in length order.
    """
    was_training = reader.training
    reader.eval()
    dtype = autocast_dtype(precision, device)
    if next(reader.encoder.parameters()).dtype != torch.float32:
        dtype = None  # weights cast by `load_reader` (reader.json's cast_weights): no autocast on top
    layout, marks = examples.layout, examples.marks
    built = [examples.reading(i) for i in range(len(examples.mention_ids))]
    order = [i for i in np.argsort([item.tokens for item in built], kind="stable") if built[i].kept]
    columns: dict[str, list] = {name: [] for name in SCORES_SCHEMA}
    for offset in range(0, len(order), batch_mentions):
        batch = order[offset : offset + batch_mentions]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = read(reader, [built[i] for i in batch], layout.top_k + 1, marks, device)
        probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()  # (B, top_k + 1)
        for row, index in enumerate(batch):
            kb_ids = built[index].kept
            columns["mention_id"] += [examples.mention_ids[index]] * len(kb_ids)
            columns["kb_id"] += kb_ids
            columns["slot"] += list(range(1, len(kb_ids) + 1))
            columns["score"] += probabilities[row, 1 : len(kb_ids) + 1].tolist()
            columns["nil_score"] += [float(probabilities[row, reader_inputs.NIL_SLOT])] * len(kb_ids)
    reader.train(was_training)
    return pl.DataFrame(columns, schema=SCORES_SCHEMA)


def new_reader(
    encoder_path: str,
    device: torch.device,
    seed: int,
    setting: str = "rerank.encoder",
    evidence: bool = False,
    layers: int = 0,
) -> tuple[Reader, object]:
    """(a Reader around a fresh copy of the encoder at `encoder_path`, its tokenizer with the markers); E501
    when it cannot be loaded, saying plainly when `setting` (the config key that named it) names no model
    folder. The head and the markers' new embedding rows are seeded by `seed`; `evidence`: the reader
    reads triage evidence (`Reader`); `layers` > 0 keeps only the encoder's lowest `layers` transformer
    layers (`keep_lower_layers`; E203 past the top)."""
    from transformers import AutoTokenizer

    from pipeline.encoders.encoder import load_problem

    try:
        tokenizer = AutoTokenizer.from_pretrained(encoder_path, use_fast=True)
        encoder = _encoder_model(encoder_path)
    except (OSError, ValueError) as exc:
        detail = load_problem(encoder_path, encoder_path, setting, exc)
        raise ConfigError("E501", name=encoder_path, detail=detail) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("E501", name=encoder_path, detail="it has no fast tokenizer, which offset mappings need")
    keep_lower_layers(encoder, layers)
    torch.manual_seed(seed)
    encoder.resize_token_embeddings(reader_inputs.add_markers(tokenizer))
    return Reader(encoder, reader_inputs.EVIDENCE_WIDTH if evidence else 0).to(device), tokenizer


def keep_lower_layers(encoder: torch.nn.Module, layers: int) -> None:
    """Drop every transformer layer of `encoder` above its lowest `layers` (0: keep all); E203 past the top.

    The reader's cost grows with its depth, and fine-tuning after dropping the top layers keeps most
    of the accuracy (Sajjad et al., "On the effect of dropping layers of pre-trained transformer
    models", Computer Speech & Language 2023). The config's `num_hidden_layers` follows, so the saved
    reader loads at its own depth with `AutoModel`."""
    if layers == 0:
        return
    blocks = _layer_list(encoder, "encoder_layers", layers)
    encoder.encoder.layer = torch.nn.ModuleList(list(blocks)[:layers])
    encoder.config.num_hidden_layers = layers


def _layer_list(encoder: torch.nn.Module, field: str, layers: int) -> torch.nn.ModuleList:
    """The encoder's transformer layers (BERT and XLM-R keep them at `encoder.encoder.layer`); E203 naming
    [rerank] `field` when it has none, or fewer than `layers`."""
    blocks = getattr(getattr(encoder, "encoder", None), "layer", None)
    if blocks is None or layers > len(blocks):
        raise too_deep(field, layers, "no layer list xel knows" if blocks is None else f"only {len(blocks)} layers")
    return blocks


def too_deep(field: str, layers: int, have: str) -> ConfigError:
    """E203 for [rerank] `field` = `layers` when the starting encoder has `have` ("only 12 layers")."""
    return ConfigError(
        "E203",
        where="[rerank]",
        field=field,
        value=layers,
        reason=f"the encoder has {have}; give a smaller number, or 0",
    )


def _encoder_model(path: str | Path) -> torch.nn.Module:
    """AutoModel of `path` without a pooler (only hidden states are read; a pooler the checkpoint lacks would be
    random weights, and a warning)."""
    from transformers import AutoModel

    from pipeline.core.progress import silence_library_bars

    silence_library_bars()  # our own progress lines cover the stage; the loader's bars would be noise in a log
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:  # a model class without that argument
        return AutoModel.from_pretrained(path)


def freeze_lower_layers(reader: Reader, layers: int) -> None:
    """Keep the embeddings and the lowest `layers` transformer layers fixed (0: train all); E203 past the top."""
    if layers == 0:
        return
    blocks = _layer_list(reader.encoder, "freeze_layers", layers)
    for module in (reader.encoder.embeddings, *blocks[:layers]):
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def save_reader(reader: Reader, tokenizer, folder: Path, meta: dict) -> None:
    """Write the reader folder (encoder + tokenizer via save_pretrained, head.pt, reader.json) under a
    temporary name, then rename it into place: a kill never leaves a folder that looks finished."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        with failed_writes(folder, temp):  # a full disk, as safetensors or torch reports it: E406
            encoder = reader.encoder.module if hasattr(reader.encoder, "module") else reader.encoder
            encoder.save_pretrained(temp)
            tokenizer.save_pretrained(temp)
            head = {k: v.detach().cpu() for k, v in reader.state_dict().items() if not k.startswith("encoder.")}
            torch.save(head, temp / HEAD)
            (temp / READER_JSON).write_text(
                json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2, ensure_ascii=False, default=str)
                + "\n",
                encoding="utf-8",
            )
        default_permissions(temp)
        crash_point("before-rename", folder)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(temp, folder)
        crash_point("after-rename", folder)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def load_reader(folder: Path, device: torch.device) -> tuple[Reader, object, dict]:
    """(Reader, tokenizer, reader.json) of a saved reader folder; E402 when it is damaged or missing."""
    from transformers import AutoTokenizer

    try:
        meta = json.loads((folder / READER_JSON).read_text(encoding="utf-8"))
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"format {meta.get('format_version')} is newer than this xel reads ({FORMAT_VERSION})")
        tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
        reader = Reader(_encoder_model(folder), reader_inputs.EVIDENCE_WIDTH if meta.get("triage_evidence") else 0)
        missing, unexpected = reader.load_state_dict(
            torch.load(folder / HEAD, map_location="cpu", weights_only=True), strict=False
        )
        missing = [name for name in missing if not name.startswith("encoder.")]
        if missing or unexpected:
            raise ValueError(f"{HEAD} does not fit: missing {missing}, unexpected {unexpected}")
        reader_inputs.specials(tokenizer)  # the markers must be there
        if not isinstance(meta.get("cast_weights", False), bool):
            raise ValueError(f"cast_weights must be true or false (got {meta['cast_weights']!r})")
    except Exception as exc:  # json, transformers and torch raise many types for a damaged folder
        raise CacheError(
            "E402", path=folder, detail=f"the reader cannot be loaded ({str(exc).splitlines()[0]})"
        ) from None
    reader = reader.to(device).eval()
    if meta.get("cast_weights"):
        cast_encoder(reader, autocast_dtype(meta.get("precision", "auto"), device))
    return reader, tokenizer, meta


def cast_encoder(reader: Reader, dtype: torch.dtype | None) -> None:
    """Cast the reader's encoder weights to `dtype` (bf16, fp16; None leaves fp32), for scoring only.

    Readers whose reader.json says `cast_weights` are scored this way, by the rerank stage (the
    scores evaluate reads) and by link alike: on a 2-core AVX512-BF16 CPU it read MEANTIME dev and
    test mentions 1.07x as fast as fp32 weights under autocast (bench/rerank.py "score": 51.4 against
    47.9 mentions/s). The head stays fp32 and reads the hidden states as fp32 (`Reader.forward`). Older readers, without the
    key, keep autocast, so that link still equals what their evaluate scored.
    """
    if dtype is not None:
        reader.encoder.to(dtype)


def layout_of(meta: dict) -> Layout:
    """The sequence layout a saved reader was trained with (reader.json's "layout"; listwise when it names no form)."""
    return Layout(**meta["layout"])


def read_scores(path: Path) -> pl.DataFrame:
    """reader_scores.parquet, checked against SCORES_SCHEMA (E301 for a missing column, E401 when absent)."""
    from pipeline.core.io import collect_checked, scan_parquet_checked

    if not path.exists():
        raise CacheError("E401", path=path, stage="rerank")
    return collect_checked(scan_parquet_checked(path, SCORES_SCHEMA, "rerank").select(*SCORES_SCHEMA), path)


def reader_predictions(scores: pl.DataFrame) -> pl.DataFrame:
    """Per mention with a scored candidate: reader_kb_id (the most probable candidate; the earlier slot on a tie),
    reader_score (its probability) and reader_nil_score (the NIL option's). scores: `SCORES_SCHEMA` rows."""
    return (
        scores.sort("mention_id", "score", "slot", descending=[False, True, False])
        .group_by("mention_id", maintain_order=True)
        .first()
        .select(
            "mention_id",
            pl.col("kb_id").alias("reader_kb_id"),
            pl.col("score").cast(pl.Float64).alias("reader_score"),
            pl.col("nil_score").cast(pl.Float64).alias("reader_nil_score"),
        )
    )


@dataclass
class LoadedReader:
    """A saved reader ready to score new mentions: network, tokenizer, reader.json, device."""

    reader: Reader
    tokenizer: object
    meta: dict
    device: torch.device

    @classmethod
    def load(cls, folder: Path, device: torch.device) -> "LoadedReader":
        """`load_reader` of `folder` on `device` (E402 when damaged)."""
        return cls(*load_reader(folder, device), device)

    @property
    def layout(self) -> Layout:
        return layout_of(self.meta)

    def order(self, candidates: pl.DataFrame, ranker_scores: pl.DataFrame) -> pl.DataFrame:
        """`reader_inputs.candidate_order` as the reader was trained: by the ranker's score (ranker_scores:
        mention_id, kb_id, score), or by triage's rank for a reader trained on triage's order."""
        on_triage = self.meta.get("candidates") == "triage"
        return reader_inputs.candidate_order(candidates, None if on_triage else ranker_scores)

    def predict(self, mentions: pl.DataFrame, ordered: pl.DataFrame, entities: pl.DataFrame) -> pl.DataFrame:
        """`reader_predictions` of `mentions` (mention_id, context, start, end) against their top candidates
        by `ordered` (`order`'s table), read with the entities' texts (kb_id, name, type, description)."""
        layout = self.layout
        top = reader_inputs.top_candidates(ordered, layout.top_k)
        examples = build_examples(
            self.tokenizer, mentions, top, entities, layout, bool(self.meta.get("triage_evidence"))
        )
        scores = score_mentions(self.reader, examples, self.device, self.meta.get("precision", "auto"))
        return reader_predictions(scores)
