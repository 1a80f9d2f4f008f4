"""A trained linker applied to new mentions: `Linker.load(path)` and `linker.link(mentions)`.

`link_chunk` is the whole path from mentions to decisions, and it calls the stages' own
functions: triage's `candidate_pieces` and `merge_candidates`, encode's `plan_units` and
`encode_in_chunks`, the ranker's `score_candidates`, evaluate's `predict`, the reader
(`pipeline.model.reader`, when the model decides with it), and the NIL policy (`nil.decide_nil`,
`nil.cluster_nils`). Only entity vectors differ in where they come
from: the cross-run store (`pipeline/core/store.py`), with the entities it lacks
encoded after the chunk's mentions (apart, so a mention's vector never depends on what the
store held) and added to it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core import store as cache
from pipeline.core.config import EncoderConfig, TriageConfig
from pipeline.core.devices import pick_device
from pipeline.core.errors import CacheError, ConfigError, InputError, PipelineError
from pipeline.core.io import file_fingerprint
from pipeline.link.kb_fit import fit_report, warn_missing
from pipeline.model.model_folder import ModelFolder, load_model_folder

logger = logging.getLogger(__name__)


def encoder_sizes(path: str) -> tuple[int | None, int | None]:
    """(the width of an encoder folder's vectors, its layer count): `hidden_size` and `num_hidden_layers`
    in its config.json, read once without loading it; None for what the folder does not say (a hub
    name: known once it loads)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None

    def number(key: str) -> int | None:
        try:
            return int(config[key])
        except (KeyError, TypeError, ValueError):
            return None

    return (number("hidden_size"), number("num_hidden_layers")) if isinstance(config, dict) else (None, None)


def check_device(device: str) -> None:
    """E203 naming --device for a device the encoder and ranker cannot run on here
    (`devices.device_problem`'s check). Checked before the encoder config is built, whose own check
    would name the model's [encoder] section instead. Needs no torch for cpu and auto."""
    from pipeline.core.devices import device_problem

    reason = device_problem(device)
    if reason is not None:
        raise ConfigError("E203", where="--device", field="device", value=device, reason=reason)


@dataclass(frozen=True)
class ChunkResult:
    """Decisions for one chunk of mentions (before NIL clustering) and what it cost.

    frame: one row per mention (its input columns, best_kb_id, best_score, threshold,
    is_nil, kb_id and `candidates`, a list of {kb_id, score, triage_score, sources}
    best first); seconds: wall time; encode_seconds: of it, in the encoder.
    """

    frame: pl.DataFrame
    entities_encoded: int
    entities_cached: int
    seconds: float
    encode_seconds: float


@dataclass(frozen=True)
class ChunkVectors:
    """A chunk's vectors as the ranker reads them (float32, rounded as encode would store them):
    mention_name, mention_context (n_mentions, hidden) in the chunk's row order; entity_name,
    entity_context (n_entities, hidden) in the row order of `entities` (its candidates' entities:
    kb_id, name, description, type, sorted by kb_id); how many entities were encoded now and how many
    came from the store, and the seconds spent encoding."""

    entities: pl.DataFrame
    mention_name: np.ndarray
    mention_context: np.ndarray
    entity_name: np.ndarray
    entity_context: np.ndarray
    entities_encoded: int
    entities_cached: int
    encode_seconds: float


def links_frame(decided: pl.DataFrame, score_table: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """`ChunkResult.frame`: the decided mentions (context text dropped) with their candidates as a list of
    {kb_id, score, triage_score, sources}, best ranker score first (none: an empty list)."""
    ranked = (
        score_table.join(
            candidates.select("mention_id", "kb_id", pl.col("score").alias("triage_score"), "sources"),
            on=["mention_id", "kb_id"],
            how="left",
        )
        .sort(["mention_id", "score", "rank"], descending=[False, True, False], nulls_last=True)
        .group_by("mention_id", maintain_order=True)
        .agg(pl.struct("kb_id", "score", "triage_score", "sources").alias("candidates"))
    )
    # The context text is the bulk of a mention row and no output needs it.
    frame = decided.drop("context", "start", "end", "line", "text_hash", strict=False).join(
        ranked, on="mention_id", how="left"
    )
    return frame.with_columns(pl.col("candidates").fill_null(pl.lit([], dtype=ranked.schema["candidates"])))


# What in a model folder's reader record decides how the reader reads and scores (`ReaderMeta`).
READER_KEYS = ("layout", "candidates", "triage_evidence", "precision", "cast_weights")


class Linker:
    """A loaded model folder with its encoder, KB indexes, entity-vector store and ranker.

    `kb`: which KB the model was trained on and which it links against (`trained_on`,
    `linked_against`: name, path, fingerprint, entities), the `kb_map` path, and the counts of
    `kb_fit.KbFit.to_json` (alias-table ids kept, mapped, missing; entity types unknown to the model).
    """

    def __init__(
        self,
        folder: ModelFolder,
        kb_path: Path | None = None,
        device: str | None = None,
        kb_fingerprint: str | None = None,
        precision: str | None = None,
        kb_map: Path | None = None,
    ) -> None:
        """`kb_path`: the KB to link against (default: the model's own); it may lack ids of the model's
        alias table (W710) or key them differently (`kb_map`, an id map file: `kb_fit.read_kb_map`);
        see `pipeline/link/kb_fit.py`. `kb_fingerprint`: the KB file's content hash when the caller has
        it (hashing a KB of millions of entities takes a while). `device` and `precision` replace the
        model's [encoder] settings (the precision's vectors are cached apart: it is part of the encoder
        identity)."""
        from pipeline.candidates.generate import LearnedSources
        from pipeline.encoders.encoder import configured_identity

        self.folder = folder
        meta = folder.meta
        settings = self._read_settings(device, precision)
        path = self._checked_encoder_path(settings)
        self._encoder = None  # loaded by the first link that encodes (`encoder`): loading costs seconds
        width, layers = encoder_sizes(path)
        self._check_prior(width)
        # The ranker, loaded now: model.json's types and features must be the ones it was trained with
        # (E702 naming the key), checked before the KB is opened or anything encoded.
        self._model = None
        self._check_name_layer(layers)  # first: a layer past the encoder's says so, not "must be 1"
        self._check_ranker(width)
        self.reader = None  # checked before the KB is opened too
        if folder.meta.get("reader") and folder.policy.artifact["method"] == "reader":  # it decides: read with it
            self.reader = self._load_reader(folder)
        self._open_kb(Path(kb_path or meta["kb"]["path"]), kb_fingerprint, kb_map)
        self.mention_types = list(meta["types"].get("mention") or [])
        self.entity_types = list(meta["types"].get("entity") or [])
        # Keyed by the identity with the precision this machine runs at (the model's is files-only),
        # known without loading the encoder.
        identity_here = configured_identity(self.encoder_config)
        self.store = cache.entity_vector_store(identity_here, settings, float16=self.encoder_config.store_float16)
        self.policy = folder.policy
        # What triage's sources take from the alias table and encoder, built once here, not per chunk.
        # Ids the KB lacks are left out of them here (`kb_fit`: W710 said so).
        self.aliases, self.popularity = self.kb_fit.aliases, self.kb_fit.popularity
        self.learned = LearnedSources.prepare(
            self.aliases, self.triage_config, self.encoder_config, identity_here, self.known_ids
        )

    def _load_reader(self, folder) -> object:
        """The model folder's reader on the encoder's device: E702 when it is damaged (export again, not
        re-run the stage) or when model.json's reader record disagrees with reader.json on what decides
        how it reads and scores (`READER_KEYS`): link follows reader.json, so the two must agree."""
        from pipeline.model.reader import LoadedReader

        reader_dir = folder.path / folder.meta["reader"]["folder"]
        try:
            reader = LoadedReader.load(reader_dir, pick_device(self.encoder_config.device))
        except CacheError as error:
            raise CacheError("E702", path=reader_dir, detail=error.fields.get("detail", error.message)) from None
        record = folder.meta["reader"]
        for key in READER_KEYS:
            said, read = record.get(key), reader.meta.get(key)
            if said != read:
                missing = key not in record
                raise CacheError(
                    "E702",
                    path=folder.path / "model.json",
                    detail=f"reader.{key}: must match {reader_dir.name}/reader.json's {json.dumps(read)} "
                    f"({'missing' if missing else f'got {json.dumps(said)}'})",
                    fix_first="add that key, or " if missing else "correct that value, or ",
                )
        return reader

    def _read_settings(self, device: str | None, precision: str | None) -> dict:
        """The model's encoder settings with `device` and `precision` replaced (checked: E203), and its
        encoder and triage configs (`encoder_config`, `triage_config`, `context_chars`); E702 when malformed."""
        folder, meta = self.folder, self.folder.meta
        if device is not None:
            check_device(device)  # before EncoderConfig, whose own check would name the model's [encoder]
        try:
            settings = dict(meta["encoder"]["settings"])
            if device is not None:
                settings["device"] = device
            if precision is not None:
                settings["precision"] = precision
            self.encoder_config = EncoderConfig(**settings)
            self.triage_config = TriageConfig(**{**meta["triage"], "oracle": False})  # no gold here to add
            self.context_chars = int(meta["inputs"]["context_chars"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError("E702", path=folder.path / "model.json", detail=f"malformed settings ({exc})") from None
        if device is None:  # the model's own setting, on this machine: --device is the way to replace it
            check_device(self.encoder_config.device)
        return settings

    def _checked_encoder_path(self, settings: dict) -> str:
        """The folder of the model's encoder, whose identity must be the one the model was trained with
        (the configured name, else the folder the model recorded); E704 otherwise."""
        from pipeline.encoders.encoder import encoder_identity, resolve_encoder_path

        folder, meta = self.folder, self.folder.meta
        expected = meta["encoder"].get("identity")
        try:
            path = resolve_encoder_path(self.encoder_config.name)
            identity = encoder_identity(path)
            if identity != expected and Path(str(meta["encoder"].get("path", ""))).is_dir():
                path = str(meta["encoder"]["path"])  # the name now means another model: use the folder it was
                identity = encoder_identity(path)
                self.encoder_config = EncoderConfig(**{**settings, "name": path})
            if identity != expected:
                raise CacheError(
                    "E704",
                    name=self.encoder_config.name,
                    model=folder.path,
                    detail=f"found one with identity {identity}, the model needs {expected}",
                )
        except ConfigError as error:
            if error.code != "E501":
                raise
            raise CacheError("E704", name=self.encoder_config.name, model=folder.path, detail=error.message) from None
        return path

    def _open_kb(self, kb_path: Path, kb_fingerprint: str | None, kb_map: Path | None) -> None:
        """The KB to link against, its indexes from the store, and how the model's alias table fits it
        (`kb_fit`: E705 for a map made for another KB, W710 for alias-table ids it lacks); E706 when missing."""
        from pipeline.candidates.kb_index import kb_entities, names_index

        folder = self.folder
        if not kb_path.is_file():
            raise InputError("E706", path=kb_path, model=folder.path)
        self.kb_path = kb_path
        self.kb_fingerprint = kb_fingerprint or file_fingerprint(kb_path)
        self.index_root = cache.kb_index_root(self.kb_fingerprint)
        self.entities_path = kb_entities(kb_path, self.index_root, self.kb_fingerprint)
        entities = pl.read_parquet(self.entities_path, columns=["kb_id", "name", "alias_texts", "type"])
        self.known_ids = entities.select("kb_id")
        # E705 for a map made for another KB; W710 for alias-table ids this KB lacks.
        self.kb_fit, self.kb = fit_report(folder, entities.lazy(), kb_path, self.kb_fingerprint, kb_map)
        warn_missing(self.kb_fit, folder, kb_path)
        logger.info(
            "linking against KB %s (%s); the model was trained on %s (%s)",
            kb_path,
            self.kb_fingerprint[:8],
            self.kb["trained_on"]["path"],
            str(self.kb["trained_on"]["fingerprint"])[:8],
        )
        self.kb_names = names_index(entities, self.index_root, self.kb_fingerprint)
        del entities

    @property
    def encoder(self):
        """The model's encoder (`encoders.encoder.LoadedEncoder`), loaded on first use: E704 when it cannot be."""
        if self._encoder is None:
            from pipeline.encoders.encoder import load_encoder

            try:
                encoder = load_encoder(self.encoder_config)
            except ConfigError as error:
                if error.code == "E203" and "[encoder]" in error.message:  # a model.json setting (--device and
                    # --precision are checked before): E702 naming its key path, not a config file's E203
                    from pipeline.model.model_json import setting_problem

                    raise CacheError(
                        "E702",
                        path=self.folder.path / "model.json",
                        detail=setting_problem(error),
                        fix_first="correct that value, or ",
                    ) from None
                if error.code != "E501":
                    raise
                raise CacheError(
                    "E704", name=self.encoder_config.name, model=self.folder.path, detail=error.message
                ) from None
            self._check_prior(encoder.hidden_size)
            self._encoder = encoder
        return self._encoder

    @property
    def model(self):
        """The ranker (`model_file.load_model`) on the encoder's device, loaded on first use: E702 when it cannot be."""
        if self._model is None:
            self._model = self._load_ranker()[0]
        return self._model

    def _load_ranker(self) -> tuple:
        """(the ranker on the encoder's device, model.pt's metadata) (`model_file.load_model`); E702 when
        it cannot be loaded."""
        from pipeline.model.model_file import MODEL, load_model

        try:
            return load_model(self.folder.path, pick_device(self.encoder_config.device))
        except PipelineError as error:
            raise CacheError("E702", path=self.folder.path / MODEL, detail=error.message) from None

    def _check_name_layer(self, layers: int | None) -> None:
        """E702 naming `encoder.settings.name_layer` when it is past the encoder's `layers` (None: not
        known before the encoder loads, whose own check is turned into the same E702 then: `encoder`)."""
        name_layer = self.encoder_config.name_layer
        if layers is not None and name_layer > layers:
            raise CacheError(
                "E702",
                path=self.folder.path / "model.json",
                detail=f"encoder.settings.name_layer: {self.encoder_config.name} has only {layers} layers "
                f"(hidden states 0..{layers}) (got {name_layer})",
                fix_first="correct that value, or ",
            )

    def _check_ranker(self, hidden_size: int | None) -> None:
        """Load the ranker (`model`) and check model.json against it (`ranker_mismatch`): E702 naming the
        key path and what it must be, e.g. a hand-edited `types.mention` of another length, which would
        otherwise fail with a shape error after encoding."""
        from pipeline.model.model_folder import ranker_mismatch

        self._model, saved = self._load_ranker()
        problem = ranker_mismatch(self.folder.meta, saved, hidden_size)
        if problem is not None:
            raise CacheError(
                "E702", path=self.folder.path / "model.json", detail=problem, fix_first="correct that value, or "
            )

    def _check_prior(self, hidden_size: int | None) -> None:
        """E702 when the mention NIL prior was fitted on vectors of another width than the encoder's
        (`hidden_size`; None: not known before the encoder loads, checked then)."""
        prior = self.folder.policy.artifact.get("mention_prior")
        if self.folder.policy.reads_prior and hidden_size is not None and len(prior["coef"]) != 2 * hidden_size:
            raise CacheError(
                "E702",
                path=self.folder.path / "model.json",
                detail=f"the mention NIL prior has {len(prior['coef'])} weights, the encoder's name and "
                f"context vectors {2 * hidden_size}",
            )

    @classmethod
    def load(
        cls,
        path: str | Path,
        kb: str | Path | None = None,
        device: str | None = None,
        fallback_threshold: float | None = None,
        precision: str | None = None,
        kb_map: str | Path | None = None,
    ) -> "Linker":
        """Load and check a model folder (E701-E706); `kb` replaces the model's KB (any KB: ids of the
        alias table it lacks are left out, W710), `kb_map` maps the alias table's ids to that KB's (as
        `--kb-map`), `device` and `precision` replace its encoder's, `fallback_threshold` the NIL threshold
        of languages the model has none for (as `--fallback-threshold`). `linker.kb` then says which KB the
        model was trained on and which it links against, and how much of the alias table and types carried
        over."""
        folder = load_model_folder(Path(path))
        if fallback_threshold is not None:
            folder = dataclasses.replace(folder, policy=folder.policy.with_unseen_threshold(fallback_threshold))
        return cls(
            folder,
            Path(kb) if kb is not None else None,
            device,
            precision=precision,
            kb_map=Path(kb_map) if kb_map is not None else None,
        )

    def _vectors_dtype_round(self, array: np.ndarray) -> np.ndarray:
        """Vectors as encode would store them (float16 when `store_float16`), read back as float32."""
        return array.astype(np.float16).astype(np.float32) if self.encoder_config.store_float16 else array

    def _popularity_of(self, entity_ids: pl.DataFrame) -> np.ndarray | None:
        """(n_entities,) training-gold counts of `entity_ids` (kb_id, row) in row order, for the paper's
        popularity re-ranking; None when the model does not re-rank (its folder has no counts)."""
        if self.popularity is None:
            return None
        return entity_ids.join(self.popularity, on="kb_id", how="left").sort("row")["count"].fill_null(0).to_numpy()

    def link_chunk(self, mentions: pl.DataFrame, work_dir: Path) -> ChunkResult:
        """Link one chunk of mentions (the `schema.MENTIONS` columns); see `ChunkResult`.

        `work_dir` holds the encoder's finished sub-chunks, so a killed chunk resumes there.
        """
        from pipeline.candidates.generate import candidate_pieces, merge_candidates
        from pipeline.candidates.kb_index import KbIndex

        started = time.time()
        kb = KbIndex(self.kb_names, self.known_ids, self.index_root, self.kb_fingerprint)
        pieces = candidate_pieces(
            mentions, kb, self.learned, self.triage_config, self.encoder_config, None, self.encoder
        )
        candidates = merge_candidates(pieces, mentions, self.triage_config.k, oracle=False)
        vectors = self._chunk_vectors(mentions, candidates, work_dir)
        score_table, predictions = self._ranked(mentions, candidates, vectors)
        if self.reader is not None:
            ordered = self.reader.order(candidates, score_table)
            predictions = predictions.join(
                self.reader.predict(mentions, ordered, vectors.entities), on="mention_id", how="left"
            )
        # Rows in mentions' order.
        with_prior = self.policy.with_mention_prior(mentions, vectors.mention_name, vectors.mention_context)
        decided = self.policy.decide(with_prior.join(predictions, on="mention_id", how="left"), candidates)
        return ChunkResult(
            links_frame(decided, score_table, candidates),
            vectors.entities_encoded,
            vectors.entities_cached,
            time.time() - started,
            vectors.encode_seconds,
        )

    def _chunk_vectors(self, mentions: pl.DataFrame, candidates: pl.DataFrame, work_dir: Path) -> ChunkVectors:
        """The vectors of a chunk's mentions and of its candidates' entities: those the store holds read
        from it, the others encoded and added to it.

        Mentions and entities are encoded apart (under `work_dir`/mentions and /entities): batches are of
        texts of like length, and a text's vector depends in its last bits on the batch it is in (the
        padded length picks other kernels: 3e-7 for multilingual-e5-small on a CPU). In one pass with the
        entities the store lacks, a mention's vector would differ by what the store held before, so two
        links of the same mentions could break a near-tie two ways; apart, it depends on the chunk's
        mentions alone (docs/reproducibility.md).
        """
        from pipeline.encoders.chunks import encode_in_chunks
        from pipeline.encoders.plan import plan_units

        entities = (
            pl.scan_parquet(self.entities_path)
            .filter(pl.col("kb_id").is_in(candidates["kb_id"].unique().implode()))
            .select("kb_id", "name", "description", "type")
            .collect()
            .sort("kb_id")
        )
        keys = cache.content_keys(entities)
        found, entity_name, entity_context = self.store.lookup(keys, self.encoder.hidden_size)
        missing = entities.filter(pl.Series(~found))
        encode_started = time.time()
        settings = self.encoder_config
        plan = plan_units(mentions, missing.clear(), self.encoder, settings)
        context_vectors, span_vectors, _, _ = encode_in_chunks(
            self.encoder, plan.table, settings, work_dir / "mentions"
        )
        entity_plan = plan_units(mentions.clear(), missing, self.encoder, settings)
        entity_contexts, entity_spans, _, _ = encode_in_chunks(
            self.encoder, entity_plan.table, settings, work_dir / "entities"
        )
        new_name, new_context = entity_spans[entity_plan.entity_span_rows], entity_contexts[entity_plan.entity_units]
        self.store.add([k for k, hit in zip(keys, found) if not hit], new_name, new_context)
        entity_name[~found], entity_context[~found] = (
            self._vectors_dtype_round(new_name),
            self._vectors_dtype_round(new_context),
        )
        return ChunkVectors(
            entities,
            self._vectors_dtype_round(span_vectors[plan.mention_span_rows]),
            self._vectors_dtype_round(context_vectors[plan.mention_units]),
            entity_name,
            entity_context,
            int(missing.height),
            int(found.sum()),
            time.time() - encode_started,
        )

    def _ranked(
        self, mentions: pl.DataFrame, candidates: pl.DataFrame, vectors: ChunkVectors
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The ranker's (score table, predictions) of a chunk's candidates (`predict.predict`)."""
        import torch

        from pipeline.model.features import RankerInputs, candidate_matrix, one_hot, score_candidates, score_nil
        from pipeline.model.predict import predict

        device = self.encoder.device
        table = mentions.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
        entity_ids = vectors.entities.select("kb_id").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
        inputs = RankerInputs(
            mentions=table,
            entity_ids=entity_ids,
            mention_name=torch.from_numpy(vectors.mention_name).to(device),
            mention_context=torch.from_numpy(vectors.mention_context).to(device),
            entity_name=torch.from_numpy(vectors.entity_name).to(device),
            entity_context=torch.from_numpy(vectors.entity_context).to(device),
            mention_type_onehot=one_hot(mentions["entity_type"], self.mention_types).to(device),
            entity_type_onehot=one_hot(vectors.entities["type"], self.entity_types).to(device),
        )
        if "triage" in self.model.features:
            inputs.attach_triage(candidates)
        rows = np.arange(mentions.height)
        matrix = candidate_matrix(candidates, inputs, rows)
        scores = score_candidates(self.model, inputs, rows, matrix)
        popularity = self._popularity_of(entity_ids)
        return predict(
            table, rows, matrix, scores, entity_ids["kb_id"].to_list(), popularity, score_nil(self.model, inputs, rows)
        )  # None without a NIL option

    def link(self, mentions: object, docs: object | None = None) -> pl.DataFrame:
        """Link mentions given in memory; returns the `links.parquet` table (see `outputs.links_table`).

        mentions: records with the JSONL fields (`id`, `doc_id`, `lang`, `mention`, and `text` +
        `start`/`end` or `doc_start`/`doc_end` with `docs` (doc_id, text)) as a polars or pandas
        DataFrame, a pyarrow Table or a list of dicts; numpy and pandas values are read as their
        Python equivalents (`sources.native_records`). Gold ids and splits are ignored. NIL
        clusters span this call. No mentions give an empty table of the same columns and dtypes
        (`outputs.LINKS_SCHEMA`). Errors: the JSONL reader's (E1xx), naming `<mentions>` and the row.
        """
        from pipeline.formats.inputs import check_doc_record
        from pipeline.link.outputs import LINKS_SCHEMA, links_table
        from pipeline.link.sources import native_records, records_frame

        records = native_records(mentions)
        if not records:  # the stages' steps index a first row; nothing to link is no error here
            return pl.DataFrame(schema=LINKS_SCHEMA)
        doc_texts = None
        if docs is not None:
            doc_records = native_records(docs, "<docs>")
            for row, record in enumerate(doc_records, start=1):
                check_doc_record(Path("<docs>"), row, record)  # E102/E103 naming the row, as a docs file's line
            doc_texts = pl.DataFrame(
                [(r["doc_id"], r["text"]) for r in doc_records],
                orient="row",
                schema={"doc_id": pl.String, "doc_text": pl.String},
            )
        frame = records_frame(records, Path("<mentions>"), self.context_chars, keep_gold=False, docs=doc_texts)
        with tempfile.TemporaryDirectory(prefix="xel-link-") as work_dir:
            result = self.link_chunk(frame, Path(work_dir))
        self.policy.warn_unseen(result.frame)
        return links_table(self.policy.cluster(result.frame))
