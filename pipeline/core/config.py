"""Typed run configuration: a frozen dataclass per section, checked in `__post_init__`.

Reading a TOML file and `--set` overrides into these is `pipeline.core.config_file`'s job;
`to_dict` gives the JSON view saved as the run's config.json and hashed into stage keys.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pydantic import TypeAdapter

from pipeline.core.errors import ConfigError
from pipeline.core.languages import LANGUAGE_TAG_EXPECTED, UNKNOWN_LANGUAGE, is_language_tag, normalise_language

# A `device` setting as written (whether this machine has it is checked when it is used:
# `pipeline.core.devices.pick_device`).
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:[0-9]+)?"
DEVICE_EXPECTED = "use auto, cpu, cuda, cuda:N or mps"
# A `precision` setting (what each means and what auto picks: `pipeline.encoders.precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
PRECISION_EXPECTED = "use auto, fp32, bf16, fp16 or int8 (int8: CPU only)"


def check_setting(where: str, name: str, value: object, ok: bool, reason: str) -> None:
    """E203 for the setting `name` (of `where`: a config section or a command-line option) unless `ok`:
    its `value` and the `reason` it is refused."""
    if not ok:
        raise ConfigError("E203", where=where, field=name, value=value, reason=reason)


# Counts and sizes reach numpy, torch, FAISS and the tokenizers as 32- or 64-bit integers, and a
# Python int past them fails there, after work was done, with an OverflowError: a count setting
# takes at most MAX_COUNT, any integer setting (a seed too) at most MAX_INTEGER.
MAX_COUNT = 2**31 - 1
MAX_INTEGER = 2**63 - 1


def _check_at_least(where: str, config: object, least: int, *names: str) -> None:
    """E203 for each of `config`'s fields `names` below `least` or above `MAX_COUNT`."""
    for name in names:
        value = getattr(config, name)
        check_setting(where, name, value, least <= value <= MAX_COUNT, f"must be between {least} and {MAX_COUNT}")


def _check_device(where: str, device: object) -> None:
    """E203 for a `device` setting not written as `DEVICE_PATTERN` ([encoder] and [train] alike)."""
    check_setting(
        where,
        "device",
        device,
        isinstance(device, str) and re.fullmatch(DEVICE_PATTERN, device) is not None,
        DEVICE_EXPECTED,
    )


def language_settings(where: str, name: str, tags: Iterable[str]) -> list[str]:
    """Language settings read as the inputs' languages are (`pipeline.core.languages`: en-US -> en); E203
    for a value that is not a language tag (`unknown`, the TAC reader's label, may be named too)."""
    tags = list(tags)
    check_setting(
        where,
        name,
        tags,
        all(is_language_tag(tag) or tag == UNKNOWN_LANGUAGE for tag in tags),
        f"each should be {LANGUAGE_TAG_EXPECTED}",
    )
    return [tag if tag == UNKNOWN_LANGUAGE else normalise_language(tag) for tag in tags]


def language_keyed(where: str, name: str, values: dict[str, Any]) -> dict[str, Any]:
    """A setting keyed by language, its keys read by `language_settings`; E203 for two keys that
    mean one language (`en` and `EN`), which would otherwise keep one value and drop the other unsaid."""
    keys = language_settings(where, name, values)
    first_tag: dict[str, str] = {}
    for tag, key in zip(values, keys):
        check_setting(
            where,
            name,
            values,
            key not in first_tag,
            f"keys {first_tag.get(key)!r} and {tag!r} both mean language {key!r}; keep one of them",
        )
        first_tag[key] = tag
    return dict(zip(keys, values.values()))


@dataclass(frozen=True)
class InputsConfig:
    """Where the run's data comes from. Either JSONL mentions or TAC .tab files."""

    kb: Path | None = None
    mentions: Path | None = None
    docs: Path | None = None
    # TAC KBP 2015 EDL gold files by split, plus the folder of raw source documents.
    tac_train: Path | None = None
    tac_dev: Path | None = None
    tac_test: Path | None = None
    tac_source: Path | None = None
    # Outside triage: CSV/TSV of mention_id, kb_id, score.
    candidates: Path | None = None
    # Keep only proper-name mentions when the input marks them (`named`).
    named_only: bool = False
    # Repeated mention ids are an error unless this is set; then a repeated id gets its span
    # appended ("id#start-end"). MEANTIME reuses ids for nested mentions of one span start.
    rename_duplicate_ids: bool = False
    # Two mentions of one span are an error (E115) unless this is set; then the first (by line) is
    # kept and the others dropped, with one warning that counts them (W108). Annotated corpora
    # mark one span twice with two gold ids (NEREL's training part has 15 such spans).
    drop_duplicate_spans: bool = False
    # Characters of document text kept on each side of a mention taken from a docs file.
    context_chars: int = 600
    # Each mention's `entity_type` (the JSONL field; a TAC .tab's type column, PER/ORG/GPE/...)
    # is its type, one-hot in the ranker's type features. true: ignore it, as for mentions that
    # give none (`xel-cli link --ignore-entity-type` for a corpus to link). See docs/inputs.md.
    ignore_entity_type: bool = False

    def __post_init__(self) -> None:
        where = "[inputs]"
        check_setting(where, "kb", self.kb, self.kb is not None, "a KB JSONL file is required")
        has_jsonl = self.mentions is not None
        has_tac = any(p is not None for p in (self.tac_train, self.tac_dev, self.tac_test))
        check_setting(
            where,
            "mentions",
            self.mentions,
            has_jsonl or has_tac,
            "give mentions = a JSONL file, or tac_train/tac_dev/tac_test .tab files with tac_source",
        )
        check_setting(
            where,
            "tac_source",
            self.tac_source,
            not has_tac or self.tac_source is not None,
            "TAC .tab files need tac_source, the folder of source documents",
        )
        check_setting(
            where,
            "context_chars",
            self.context_chars,
            50 <= self.context_chars <= MAX_COUNT,
            f"must be between 50 and {MAX_COUNT}",
        )


@dataclass(frozen=True)
class EncoderConfig:
    """The multilingual transformer that makes every vector (paper §3.1)."""

    # A Hugging Face name, a local folder, or the offline build "xel/multilingual-e5-small".
    name: str = "xel/multilingual-e5-small"
    # Hidden-state index for name vectors; the paper's code used 1 (just above the embeddings).
    name_layer: int = 1
    max_context_tokens: int = 512
    max_name_tokens: int = 32
    # Sub-words per forward batch; batches are sorted by length so padding stays small.
    batch_tokens: int = 16384
    # Distinct texts per chunk: encode writes each finished chunk to disk and a rerun resumes
    # after the last one. Smaller chunks lose less to a kill; each costs one small file.
    chunk_texts: int = 4096
    device: str = "auto"
    # auto, fp32, bf16, fp16 or int8 (CPU only); auto: bf16 on CUDA and on CPUs with native bf16
    # (avx512_bf16 / amx_bf16), fp32 on other CPUs (docs/performance.md). Part of the encoder's
    # identity: changing what it resolves to re-encodes.
    precision: str = "auto"
    store_float16: bool = False
    # Encode every KB entity, not only those that appear as a candidate or a gold link.
    all_entities: bool = False

    def __post_init__(self) -> None:
        where = "[encoder]"
        check_setting(where, "name", self.name, bool(self.name), "give a model name or folder")
        _check_at_least(where, self, 0, "name_layer")
        check_setting(
            where,
            "max_context_tokens",
            self.max_context_tokens,
            16 <= self.max_context_tokens <= 8192,
            "must be between 16 and 8192",
        )
        check_setting(
            where,
            "max_name_tokens",
            self.max_name_tokens,
            4 <= self.max_name_tokens <= 8192,
            "must be between 4 and 8192",
        )
        check_setting(
            where,
            "batch_tokens",
            self.batch_tokens,
            self.batch_tokens >= self.max_context_tokens,
            "must be at least max_context_tokens",
        )
        _check_at_least(where, self, 1, "chunk_texts")
        _check_device(where, self.device)
        check_setting(where, "precision", self.precision, self.precision in PRECISIONS, PRECISION_EXPECTED)


@dataclass(frozen=True)
class TriageConfig:
    """Candidate generation."""

    k: int = 10
    use_priors: bool = True
    use_kb_names: bool = True
    use_fuzzy: bool = True
    # Minimum rapidfuzz score (0-100) for a fuzzy name match to count.
    fuzzy_min_score: float = 70.0
    # Dense cross-lingual name retrieval with the run's encoder (finds 奥巴马 -> Barack Obama).
    use_dense: bool = True
    # Nearest KB names kept per mention string by the dense source.
    dense_k: int = 10
    # Text put before every name: e5 models are trained with "query: "; use "" for others.
    dense_prefix: str = "query: "
    # Cosine similarity mapped to a [0, 1] score: (cos - floor) / (1 - floor), clipped.
    # Unrelated names of e5 sit around 0.7-0.8 cosine, hence the high floor.
    dense_floor: float = 0.8
    # Add the gold entity when triage missed it (the paper's Multi+Or setting).
    oracle: bool = False
    # Cross-fit what triage learns from the training labels (the alias prior and the fuzzy source's
    # training surface forms): with N >= 2, the training documents fall into N folds and each fold's
    # mentions get candidates from the other folds' labels only, so a training mention never finds its
    # gold through its own label, as a dev or test mention cannot (docs/stages.md). 0: off (the
    # training split sees its own labels).
    crossfit_folds: int = 0

    def __post_init__(self) -> None:
        where = "[triage]"
        check_setting(
            where,
            "crossfit_folds",
            self.crossfit_folds,
            self.crossfit_folds == 0 or 2 <= self.crossfit_folds <= 100,
            "must be 0 (off) or between 2 and 100",
        )
        check_setting(where, "k", self.k, 1 <= self.k <= 1000, "must be between 1 and 1000")
        check_setting(
            where, "fuzzy_min_score", self.fuzzy_min_score, 0 <= self.fuzzy_min_score <= 100, "must be in 0-100"
        )
        check_setting(where, "dense_k", self.dense_k, 1 <= self.dense_k <= 1000, "must be between 1 and 1000")
        check_setting(where, "dense_floor", self.dense_floor, -1 <= self.dense_floor < 1, "must be in [-1, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """The ranker (paper §3.2) and its training (§3.3); defaults are the paper's."""

    # The paper's features; "triage" adds the candidate's triage score and sources (ours,
    # not the paper's: it carries the priors into the ranker, which helps small data).
    features: tuple[str, ...] = ("name", "context", "type")
    triage_hidden: tuple[int, ...] = (16,)
    name_hidden: tuple[int, ...] = (1024,)
    context_hidden: tuple[int, ...] = (512,)
    type_hidden: tuple[int, ...] = (64,)
    final_hidden: tuple[int, ...] = (512, 256)
    dropout: float = 0.2
    learning_rate: float = 1e-4
    batch_mentions: int = 100
    negatives: int = 20
    # Share of negatives drawn from the mention's own candidates; the rest at random.
    hard_negative_share: float = 0.5
    margin: float = 1.0
    epochs: int = 500
    # Stop when dev micro-average has not improved for this many epochs (0: never).
    patience: int = 50
    eval_every: int = 5
    checkpoint_every: int = 50
    # Also checkpoint at the end of an epoch when this many minutes have passed since the last
    # checkpoint (or the start), so a long epoch-count still leaves a first checkpoint within
    # minutes (0: only every checkpoint_every epochs). Neither changes the model.
    checkpoint_minutes: float = 5.0
    min_type_count: int = 100
    # The paper's settings: Mono = one language here, Multi = all (empty), zero-shot = some
    # languages here and others in [evaluate] languages. Dev accuracy for early stopping
    # is measured on these languages too, so no other language's labels steer training.
    train_languages: tuple[str, ...] = ()
    # MultiDS: down-sample the training mentions to this language's training-mention count
    # (a seeded random subset), so Multi and Mono train on equally many mentions.
    downsample_to_language: str = ""
    # "nn": the paper's nearest-neighbour baseline, no training: score = cosine of the
    # mention-string and entity-name vectors. "none": the trained ranker.
    baseline: str = "none"
    # §7.1 name matching: a file of foreign/English name pairs (.tsv: foreign, English and an
    # optional language per line; or .jsonl: {"foreign", "english", "lang"}). The pairs train the
    # name pair MLP through a matching layer of their own, dropped after training; the loss is
    # name_pair_weight * N + L. A weight of 0 is the same as no pairs.
    name_pairs: Path | None = None
    name_pair_weight: float = 0.5
    # English names of other pairs drawn as negatives for each pair (as `negatives` for mentions).
    name_pair_negatives: int = 20
    seed: int = 13
    device: str = "auto"
    # Weight averaging for stabler models across seeds: an exponential moving average of the
    # ranker's weights, updated after every epoch with this decay (0: off; 0.8 averages over
    # about the last five epochs). Dev accuracy, the best epoch and model.pt use the average.
    weight_average: float = 0.0
    # A learned "none of the above" option scored with the candidates (after ReFinED, Ayoola
    # et al. 2022): NIL-gold training mentions then train too, with their NIL score as the
    # positive, and every linked mention's gold must beat its NIL score by the margin.
    # evaluate's nil_method "nota" says NIL when that score beats the best candidate's.
    nil_candidate: bool = False
    # How the name and context pair MLPs see a (mention, entity) pair: "concat" is the paper's
    # [mention; entity]; "product" is [mention; mention * entity] and "similarity" [mention; their
    # cosine]: there no weight scores an entity alone, so the ranker cannot learn to prefer the
    # entities it was trained on. For a model meant for KBs it was not trained on (docs/any-kb.md).
    pair_input: str = "concat"

    @property
    def name_matching(self) -> bool:
        """Whether the §7.1 auxiliary loss is on: a pairs file and a weight above 0."""
        return self.name_pairs is not None and self.name_pair_weight > 0

    def __post_init__(self) -> None:
        where = "[train]"
        self._check_ranker(where)
        self._check_schedule(where)
        self._check_languages(where)
        check_setting(
            where,
            "name_pair_weight",
            self.name_pair_weight,
            0 <= self.name_pair_weight < float("inf"),
            "must be >= 0 (0 turns the name-matching loss off)",
        )
        _check_at_least(where, self, 1, "name_pair_negatives")
        check_setting(
            where,
            "nil_candidate",
            self.nil_candidate,
            isinstance(self.nil_candidate, bool) and not (self.nil_candidate and self.baseline == "nn"),
            "use true or false; the nearest-neighbour baseline has no NIL score (set baseline = none)",
        )
        check_setting(
            where,
            "pair_input",
            self.pair_input,
            self.pair_input in ("concat", "product", "similarity"),
            "use concat, product or similarity",
        )
        if self.name_pairs is not None:
            self._check_name_pairs(where)

    def _check_ranker(self, where: str) -> None:
        """E203 for a ranker that cannot be built: its device, features and layer sizes."""
        _check_device(where, self.device)
        known = {"name", "context", "type", "triage"}
        check_setting(
            where,
            "features",
            self.features,
            bool(self.features) and set(self.features) <= known,
            f"use a non-empty subset of {sorted(known)}",
        )
        for name in ("name_hidden", "context_hidden", "type_hidden", "triage_hidden", "final_hidden"):
            sizes = getattr(self, name)
            check_setting(
                where,
                name,
                sizes,
                bool(sizes) and all(isinstance(s, int) and s > 0 for s in sizes),
                "give at least one layer; sizes must be positive integers",
            )
        check_setting(where, "dropout", self.dropout, 0 <= self.dropout < 1, "must be in [0, 1)")

    def _check_schedule(self, where: str) -> None:
        """E203 for training settings out of range: step size, batches, negatives, epochs, checkpoints."""
        check_setting(where, "learning_rate", self.learning_rate, 0 < self.learning_rate < 1, "must be in (0, 1)")
        _check_at_least(where, self, 1, "batch_mentions", "negatives")
        check_setting(
            where,
            "hard_negative_share",
            self.hard_negative_share,
            0 <= self.hard_negative_share <= 1,
            "must be in [0, 1]",
        )
        check_setting(where, "margin", self.margin, self.margin > 0, "must be > 0")
        _check_at_least(where, self, 1, "epochs", "eval_every", "checkpoint_every")
        check_setting(
            where,
            "checkpoint_minutes",
            self.checkpoint_minutes,
            math.isfinite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0,
            "must be >= 0 (0: off)",
        )
        check_setting(
            where, "weight_average", self.weight_average, 0 <= self.weight_average < 1, "must be in [0, 1) (0: off)"
        )
        check_setting(where, "baseline", self.baseline, self.baseline in ("none", "nn"), "use none (the ranker) or nn")

    def _check_languages(self, where: str) -> None:
        """E203 for a language setting that is not a tag; the others are normalised (en-US -> en)."""
        check_setting(
            where, "train_languages", self.train_languages, all(self.train_languages), "language codes cannot be empty"
        )
        object.__setattr__(
            self, "train_languages", tuple(language_settings(where, "train_languages", self.train_languages))
        )
        if self.downsample_to_language:
            object.__setattr__(
                self,
                "downsample_to_language",
                language_settings(where, "downsample_to_language", [self.downsample_to_language])[0],
            )

    def _check_name_pairs(self, where: str) -> None:
        """E203 for a name-pairs file of an unknown kind, or one the ranker has no name pair MLP for."""
        check_setting(
            where,
            "name_pairs",
            str(self.name_pairs),
            self.name_pairs.suffix.lower() in (".tsv", ".txt", ".jsonl"),
            "give a .tsv (or .txt) file of tab-separated pairs or a .jsonl file",
        )
        check_setting(
            where,
            "name_pairs",
            str(self.name_pairs),
            "name" in self.features and self.baseline == "none",
            'name matching trains the ranker\'s name pair MLP: keep "name" in features and baseline = none',
        )


@dataclass(frozen=True)
class RerankConfig:
    """The reader (beyond the paper; docs/reader.md): a fine-tuned transformer that reads each mention
    in its context together with its top candidates and a learned "none of the above" (NIL) option."""

    # Off: the paper's pipeline, unchanged. On: `xel-cli run` runs rerank after train and
    # evaluate offers the reader as a NIL method ("reader") beside the ranker's.
    enabled: bool = False
    # A Hugging Face name or folder; "" = the run's own encoder ([encoder] name).
    encoder: str = ""
    # Whose order picks each mention's top_k candidates: the trained ranker's scores, or triage's rank.
    candidates: str = "ranker"
    top_k: int = 8
    # "listwise": one sequence per mention holding its context, the NIL option and every candidate
    # (ReLiK's reader); "pairwise": one sequence per mention-candidate pair (BLINK's cross-encoder)
    # and one with the NIL option alone, about top_k times the compute.
    form: str = "listwise"
    # Sub-words of one sequence (context + NIL option + all top_k candidates); of them at most
    # max_context_tokens for the context window around the mention, the rest shared by the candidates.
    max_seq_tokens: int = 256
    max_context_tokens: int = 96
    epochs: int = 3
    learning_rate: float = 3e-5
    # The head's projections start from the identity and learn at their own, larger rate (on MEANTIME the
    # reader's dev micro-average went from 0.742 to 0.758 with it; docs/reader.md).
    head_learning_rate: float = 1e-3
    batch_mentions: int = 8
    # Batches whose gradients are summed before each optimizer step (a larger batch in the same memory).
    grad_accumulation: int = 1
    # Transformer layers of the starting encoder the reader keeps, counted from the bottom; 0 keeps
    # all. Fewer layers read faster at link time (docs/reader.md, "A shallower reader").
    encoder_layers: int = 0
    # Lower transformer layers kept frozen (with the embeddings when > 0); 0 trains every layer.
    freeze_layers: int = 0
    # Share of linked training mentions whose gold is removed from their candidates and whose label
    # becomes NIL, so "not in the KB" is learned from more than the NIL mentions (after BLINKout).
    nil_hidden_share: float = 0.1
    # Shuffle each training mention's candidate slots every epoch. Candidates come in the ranker's
    # order, and a ranker trained on the same mentions puts their gold first: unshuffled, the reader
    # learns "slot 1", not the context (bench/ambiguity.py: it copied the ranker on 196 of 196).
    shuffle_slots: bool = True
    # Give the reader triage's evidence of each candidate (its summed score and which sources proposed
    # it: the alias prior, a KB name, fuzzy, dense), as the ranker's "triage" feature does: a small
    # network adds a learned score to each candidate's logit, so the reader weighs the name evidence
    # it cannot see against the context it reads (the priors of ReFinED, Ayoola et al. 2022).
    triage_evidence: bool = False
    # "auto": as [encoder] precision's auto (bf16 on CUDA and on CPUs with AVX512-BF16 / AMX, else fp32).
    precision: str = "auto"
    device: str = "auto"
    seed: int = 13

    def __post_init__(self) -> None:
        where = "[rerank]"
        _check_device(where, self.device)
        check_setting(
            where, "candidates", self.candidates, self.candidates in ("ranker", "triage"), "use ranker or triage"
        )
        check_setting(where, "top_k", self.top_k, 1 <= self.top_k <= 64, "must be between 1 and 64")
        check_setting(where, "form", self.form, self.form in ("listwise", "pairwise"), "use listwise or pairwise")
        _check_at_least(where, self, 8, "max_context_tokens")
        # [CLS] context with two markers [SEP] NIL, then each candidate's marker and at least two sub-words, [SEP].
        least = self.max_context_tokens + 5 + 3 * self.top_k
        check_setting(
            where,
            "max_seq_tokens",
            self.max_seq_tokens,
            least <= self.max_seq_tokens <= 8192,
            f"must be between max_context_tokens + 5 + 3 * top_k = {least} and 8192",
        )
        _check_at_least(where, self, 1, "epochs")
        for name in ("learning_rate", "head_learning_rate"):
            rate = getattr(self, name)
            check_setting(where, name, rate, 0 < rate < 1, "must be in (0, 1)")
        _check_at_least(where, self, 1, "batch_mentions", "grad_accumulation")
        _check_at_least(where, self, 0, "freeze_layers", "encoder_layers")
        if self.encoder_layers:
            check_setting(
                where,
                "freeze_layers",
                self.freeze_layers,
                self.freeze_layers <= self.encoder_layers,
                f"must be at most encoder_layers ({self.encoder_layers}), the layers the reader keeps",
            )
        check_setting(
            where, "nil_hidden_share", self.nil_hidden_share, 0 <= self.nil_hidden_share < 1, "must be in [0, 1)"
        )
        check_setting(
            where, "precision", self.precision, self.precision in ("auto", "fp32", "bf16"), "use auto, fp32 or bf16"
        )


@dataclass(frozen=True)
class EvaluateConfig:
    """NIL decisions and scoring (paper §4)."""

    # Split the scores are reported on.
    eval_split: str = "test"
    # Split NIL thresholds are tuned on; tuning on test is refused.
    tune_split: str = "dev"
    # "dev": sweep on the dev split per language; "fixed": use the values below.
    # The sweep maximises KBP2010 micro-average per language, the paper's measure.
    threshold_mode: str = "dev"
    # Fixed thresholds (paper: -0.8 for English, -1 otherwise); keys are languages.
    fixed_thresholds: dict[str, float] = field(default_factory=lambda: {"en": -0.8})
    default_threshold: float = -1.0
    # "name": NIL mentions with the same normalised string share a cluster; "singleton": one each.
    nil_clustering: str = "name"
    # Languages scored (zero-shot: those not trained on); empty = every language.
    languages: tuple[str, ...] = ()
    # §7.2: re-order each mention's ten best-scored candidates by how often each was the
    # gold entity of a training mention (ties keep score order); see pipeline.evaluate.stage.
    popularity_rerank: bool = False
    # Who decides NIL (pipeline/evaluate/nil_choice.py): "threshold" (the paper's per-language
    # thresholds), "classifier" (a logistic regression over the ranker's and triage's
    # evidence, fitted on the tuning split), or "auto" (the better of the two in a 5-fold
    # cross-validation over the tuning split). The classifier needs 10 NILs there, else
    # thresholds decide (W604). "nota": NIL when the ranker's learned NIL score beats the
    # best candidate's (needs a model trained with train.nil_candidate = true); "auto" then
    # weighs it too. "reader": the reader's best candidate, NIL when its learned NIL option wins
    # (needs rerank.enabled = true); "auto" then weighs it too.
    nil_method: str = "auto"
    # Offer the classifier each mention's NIL prior: a logistic regression over the frozen
    # encoder's mention vectors, fitted on the training split's NIL and linked mentions
    # (pipeline/model/mention_prior.py). The classifier reads it only when that beats the
    # classifier without it in the dev cross-validation (report: "classifier+prior").
    nil_mention_prior: bool = True

    def __post_init__(self) -> None:
        where = "[evaluate]"
        check_setting(
            where,
            "nil_method",
            self.nil_method,
            self.nil_method in ("threshold", "classifier", "nota", "reader", "auto"),
            "use threshold, classifier, nota, reader or auto",
        )
        check_setting(
            where, "threshold_mode", self.threshold_mode, self.threshold_mode in ("dev", "fixed"), "use dev or fixed"
        )
        check_setting(
            where,
            "nil_clustering",
            self.nil_clustering,
            self.nil_clustering in ("name", "singleton"),
            "use name or singleton",
        )
        check_setting(
            where, "eval_split", self.eval_split, self.eval_split != "train", "evaluate on dev or test, not train"
        )
        check_setting(
            where,
            "tune_split",
            self.tune_split,
            self.tune_split != "test",
            "thresholds chosen on the test split would overstate scores; tune on dev",
        )
        check_setting(where, "languages", self.languages, all(self.languages), "language codes cannot be empty")
        object.__setattr__(self, "languages", tuple(language_settings(where, "languages", self.languages)))
        object.__setattr__(self, "fixed_thresholds", language_keyed(where, "fixed_thresholds", self.fixed_thresholds))
        # A threshold meets the ranker's tanh score (or the baseline's cosine): the model folder refuses others (E702).
        for name, values in (
            ("default_threshold", [self.default_threshold]),
            ("fixed_thresholds", list(self.fixed_thresholds.values())),
        ):
            check_setting(
                where,
                name,
                self.default_threshold if name == "default_threshold" else self.fixed_thresholds,
                all(math.isfinite(value) and -1.0 <= value <= 1.0 for value in values),
                "a NIL threshold must be a number in [-1, 1], the ranker's score range",
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs. `run_dir` holds one folder per stage."""

    name: str
    run_dir: Path
    inputs: InputsConfig
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    triage: TriageConfig = field(default_factory=TriageConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    source: Path | None = None
    # "section.key" of each setting given with --set: where a refused value came from (`config_file.located`).
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # An oracle-added gold has no triage evidence, so the triage feature would point at it.
        check_setting(
            "[train]",
            "features",
            self.train.features,
            not ("triage" in self.train.features and self.triage.oracle),
            "the triage feature cannot be used with triage.oracle = true (it would reveal the added gold)",
        )
        check_setting(
            "[evaluate]",
            "nil_method",
            self.evaluate.nil_method,
            self.evaluate.nil_method != "reader" or self.rerank.enabled,
            "the reader decides only when it is trained: set rerank.enabled = true, or use threshold, classifier, nota or auto",
        )
        check_setting(
            "[evaluate]",
            "nil_method",
            self.evaluate.nil_method,
            self.evaluate.nil_method != "reader" or self.evaluate.tune_split != "train",
            "the reader scores only dev and test mentions, so it cannot be tuned on evaluate.tune_split = train: "
            "tune on dev, or use threshold, classifier, nota or auto",
        )

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage


@functools.cache
def config_adapter(config_type: type) -> TypeAdapter:
    """pydantic's validator and serialiser for one config dataclass (built once per type)."""
    return TypeAdapter(config_type)


def to_dict(config: Any) -> Any:
    """A JSON/TOML-friendly view of a config dataclass (paths as strings, tuples as lists)."""
    return config_adapter(type(config)).dump_python(config, mode="json")
