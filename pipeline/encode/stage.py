"""encode: the paper's four vectors (§3.1) for every mention and every needed entity.

- mention string: max-pool over the mention's sub-words of hidden layer `name_layer`,
  from the encoder run over the mention's context;
- mention context: top-layer first token over up to `max_context_tokens` sub-words of
  the context with the mention centred (a context that fits is encoded whole, once,
  for all the mentions in it);
- entity name: the same max-pool over the name encoded alone;
- entity context: top-layer first token over the first sub-words of the description
  (the name when there is none).
Identical token sequences are encoded once. Output: `vectors.h5` with
`/mentions/{id,name,context}` and `/entities/{id,name,context}`, rows keyed by id.

Distinct texts are encoded in chunks (sorted by length, batched within the chunk); each
finished chunk is a file, so a killed run resumes after its last complete chunk. Shards
(`--shard i/n`) encode contiguous slices of the id-sorted mentions and entities into
their own files, which `--merge` joins into the one vectors.h5.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import polars as pl

from pipeline.core import checked_files
from pipeline.core.config import RunConfig, to_dict
from pipeline.core.errors import CacheError, SchemaError, warn
from pipeline.core.io import write_json_atomic
from pipeline.core.manifest import (
    StageIdentity,
    StageResult,
    StageRun,
    library_versions,
    read_manifest_file,
    stage_key,
    upstream_key,
)
from pipeline.core.store import content_keys, entity_vector_store
from pipeline.encode.inputs import read_triage
from pipeline.encode.name_pairs import embed_name_pairs
from pipeline.encode.shards import finished_shards, merge_group, remove_stale_work, shard_paths, shard_slice
from pipeline.encoders.chunks import encode_in_chunks
from pipeline.encoders.encoder import configured_identity, load_encoder
from pipeline.encoders.plan import plan_units
from pipeline.formats.vectors import VECTORS, vector_attributes, write_vectors

logger = logging.getLogger(__name__)

STAGE = "encode"
STAGE_VERSION = 1


def stage_identity(config: RunConfig) -> tuple[str, dict[str, str], dict]:
    """(key, inputs, settings) of this run's encode: what vectors.h5 and its manifest are keyed by."""
    # The encoder's identity holds the precision it resolves to here (auto differs by device and CPU),
    # so the setting as written is left out: auto and the precision it means give the same key.
    inputs = {
        "triage": upstream_key(config.stage_dir("triage"), "triage"),
        "encoder": configured_identity(config.encoder),
    }
    # Batching, chunking and device change speed, not vectors (up to float rounding).
    settings = {
        k: v
        for k, v in to_dict(config.encoder).items()
        if k not in ("batch_tokens", "chunk_texts", "device", "precision")
    }
    return stage_key(STAGE, STAGE_VERSION, settings, inputs), inputs, settings


def identity(config: RunConfig) -> StageIdentity:
    """What encode's key hashes (`stage_identity`), as every stage gives it."""
    _, inputs, settings = stage_identity(config)
    return StageIdentity(STAGE, STAGE_VERSION, settings, inputs)


def share_entity_vectors(
    config: RunConfig,
    encoder_identity: str,
    entities: pl.DataFrame,
    name_vectors: np.ndarray,
    context_vectors: np.ndarray,
) -> None:
    """Add the run's entity vectors ((n, H) each, rows in `entities`' order) to the store that
    `xel-cli link` reads (`pipeline.core.store`), so a link after this run encodes none of them.

    Only rows the store lacks are added; a store that cannot be written (a read-only shared
    cache) is left as it is, with one `[W404]`: the run's own vectors.h5 is complete without it.
    """
    store = entity_vector_store(encoder_identity, to_dict(config.encoder), float16=config.encoder.store_float16)
    keys = content_keys(entities)
    reason = store.writable()
    if reason is not None:
        what = "this run's entity vectors are not added to it (its encode/vectors.h5 holds them; a link encodes them again)"
        warn(logger, "W404", path=store.folder, reason=reason, what=what, cached="them")
        return
    try:
        new_rows = np.flatnonzero(~store.contains(keys))
        store.add([keys[row] for row in new_rows], name_vectors[new_rows], context_vectors[new_rows])
    except OSError as exc:
        logger.warning("entity vectors not added to the shared store %s (%s); link will encode them", store.folder, exc)


def check_config(config: RunConfig) -> None:
    """E501 when encoder.name names no model folder (`encoder.check_source`): said before anything upstream."""
    from pipeline.encoders.encoder import check_source

    check_source(config.encoder.name, "encoder.name")


def run(
    config: RunConfig, force: bool = False, shard: tuple[int, int] | None = None, merge: bool = False
) -> StageResult:
    """Encode every mention and needed entity into vectors.h5; or one shard of them; or merge the shards.

    `shard=(i, n)` encodes the i-th of n contiguous slices of the id-sorted mentions and
    entities into shards/vectors-<i>-of-<n>.h5 (+ .json manifest). `merge` joins all n
    into vectors.h5 and writes the stage manifest, as an unsharded run does. Work is
    saved in chunks under work-<key>[-<i>-of-<n>]/, so a killed run resumes. With
    `[train] name_pairs`, an unsharded run and the merge also write name_pairs.h5.
    """
    if shard is not None or not config.train.name_matching:  # λ = 0: train reads no pairs, so none are encoded
        return _encode_vectors(config, force, shard, merge)
    from pipeline.formats.name_pairs import read_name_pairs

    pairs = read_name_pairs(config.train.name_pairs)  # a bad pairs file stops the stage before any encoding
    result = _encode_vectors(config, force, shard, merge)
    key, _, _ = stage_identity(config)
    embedded = embed_name_pairs(config, config.stage_dir(STAGE), key, force, pairs)
    if not embedded:
        return result
    return dataclasses.replace(result, skipped=False, counts={**result.counts, "name_pair_names": embedded})


@dataclass(frozen=True)
class _Output:
    """Where one encode writes: its vectors file, the work folder of its finished chunks, and for a shard
    (i, n) that shard's manifest (shards run side by side, without the run lock)."""

    vectors: Path
    work_dir: Path
    shard: tuple[int, int] | None = None
    shard_manifest: Path | None = None

    @classmethod
    def of(cls, out_dir: Path, key: str, shard: tuple[int, int] | None) -> _Output:
        if shard is None:
            return cls(out_dir / VECTORS, out_dir / f"work-{key}")
        vectors, manifest = shard_paths(out_dir, shard)
        return cls(vectors, out_dir / f"work-{key}-{shard[0]}-of-{shard[1]}", shard, manifest)


def _encode_vectors(config: RunConfig, force: bool, shard: tuple[int, int] | None, merge: bool) -> StageResult:
    """Encode this run's mentions and entities (or one shard of them, or merge the shards); see `run`."""
    out_dir = config.stage_dir(STAGE)
    key, inputs, settings = stage_identity(config)
    stage_run = StageRun(out_dir, STAGE, STAGE_VERSION, settings, inputs, force)
    if merge:
        return merge_shards(config, stage_run)
    output = _Output.of(out_dir, key, shard)
    finished = _finished(stage_run, output, force)
    if finished is not None:
        return finished
    # Read and check the inputs and the encoder before the old outputs are touched: a refused run leaves them.
    mentions, entities = read_triage(config)
    if shard is not None:
        # Contiguous slices of the id-sorted lists: shards in order concatenate to the unsharded order.
        mentions, entities = shard_slice(mentions, shard), shard_slice(entities, shard)
    encoder = load_encoder(config.encoder)
    _begin(stage_run, output, force)
    groups, counts = _encode(config, encoder, mentions, entities, output)
    attributes = vector_attributes(encoder, config, key)
    if shard is not None:
        attributes["shard"] = f"{shard[0]}/{shard[1]}"
    write_vectors(output.vectors, attributes, config.encoder.store_float16, groups)
    share_entity_vectors(config, inputs["encoder"], entities, *groups["entities"][1:])
    result = _record(stage_run, output, counts, {"encoder_path": encoder.path, "device": str(encoder.device)})
    # Only now that the result is in place: the chunks are no longer needed to resume.
    shutil.rmtree(output.work_dir, ignore_errors=True)
    if shard is None:
        remove_stale_work(out_dir, key)
    return result


def _finished(stage_run: StageRun, output: _Output, force: bool) -> StageResult | None:
    """The result of an encode (or shard) that is finished already, else None."""
    if output.shard is None:
        if stage_run.up_to_date:
            # A run killed after its manifest but before deleting its chunks leaves them behind.
            shutil.rmtree(output.work_dir, ignore_errors=True)
            return stage_run.skipped()
    elif not force and _finished_shard(output.vectors, output.shard_manifest, stage_run.key):
        return StageResult(STAGE, output.vectors.parent, skipped=True, seconds=time.time() - stage_run.started)
    return None


def _begin(stage_run: StageRun, output: _Output, force: bool) -> None:
    """Remove what would make the old outputs look finished (the manifest, or the shard's, first) and, with
    `force`, the saved chunks too."""
    if output.shard is None:
        stage_run.begin(output.work_dir)
    else:
        output.shard_manifest.unlink(missing_ok=True)
    if force:
        shutil.rmtree(output.work_dir, ignore_errors=True)


def _encode(
    config: RunConfig, encoder, mentions: pl.DataFrame, entities: pl.DataFrame, output: _Output
) -> tuple[dict[str, tuple[list[str], np.ndarray, np.ndarray]], dict[str, int]]:
    """Encode the distinct texts of `mentions` and `entities` in chunks saved in the work folder (a rerun
    resumes after the last); ({group: (ids, name vectors, context vectors)} as `write_vectors` takes
    them, rows in the order of `mentions` and `entities`; the stage's counts)."""
    plan = plan_units(mentions, entities, encoder, config.encoder)
    logger.info(
        "encoding %d distinct texts (%d sub-words) for %d mentions and %d entities on %s%s",
        len(plan.table.units),
        plan.sub_words,
        mentions.height,
        entities.height,
        encoder.device,
        f" (shard {output.shard[0]}/{output.shard[1]})" if output.shard else "",
    )
    context_vectors, span_vectors, chunks, resumed = encode_in_chunks(
        encoder, plan.table, config.encoder, output.work_dir
    )
    groups = {
        "mentions": (
            mentions["mention_id"].to_list(),
            span_vectors[plan.mention_span_rows],
            context_vectors[plan.mention_units],
        ),
        "entities": (
            entities["kb_id"].to_list(),
            span_vectors[plan.entity_span_rows],
            context_vectors[plan.entity_units],
        ),
    }
    counts = {
        "mentions": mentions.height,
        "entities": entities.height,
        "distinct_texts": len(plan.table.units),
        "sub_words": plan.sub_words,
        "chunks": chunks,
        "chunks_resumed": resumed,
    }
    return groups, counts


def _record(stage_run: StageRun, output: _Output, counts: dict[str, int], extra: dict) -> StageResult:
    """Write the manifest last (the stage's, or a shard's own with the record of its vectors file,
    `checked_files`) and return the result."""
    seconds = time.time() - stage_run.started
    summary = {"texts_per_second": counts["distinct_texts"] / max(seconds, 1e-9)}
    if output.shard is None:
        return stage_run.finish(counts, [VECTORS], summary=summary, extra=extra)
    write_json_atomic(
        output.shard_manifest,
        {
            "stage": STAGE,
            "key": stage_run.key,
            "shard": list(output.shard),
            "inputs": stage_run.inputs,
            "settings": stage_run.settings,
            "outputs": [output.vectors.name],
            "versions": library_versions(),
            "counts": counts,
            "seconds": round(seconds, 3),
            **extra,
            "checked": checked_files.describe([output.vectors], output.vectors.parent),
        },
    )
    return StageResult(STAGE, output.vectors.parent, skipped=False, seconds=seconds, counts=counts, summary=summary)


def _finished_shard(target: Path, shard_manifest: Path, key: str) -> bool:
    """Whether this shard of `key` is finished and whole; a damaged one is redone, with one `[W403]`."""
    if not (shard_manifest.is_file() and target.is_file()):
        return False
    manifest = read_manifest_file(shard_manifest)
    if manifest["key"] != key:
        return False
    problem = checked_files.listed_damage(target.parent, manifest.get("checked", {}))
    if problem is not None:
        warn(logger, "W403", detail=problem, path=target)
    return problem is None


def merge_shards(config: RunConfig, stage_run: StageRun) -> StageResult:
    """Join all n finished shards of this key into vectors.h5 and write the stage manifest."""
    if stage_run.up_to_date:
        return stage_run.skipped()
    out_dir, key, inputs = stage_run.out_dir, stage_run.key, stage_run.inputs
    mentions, entities = read_triage(config)
    paths, manifests = finished_shards(out_dir, key)
    for index, (path, manifest) in enumerate(zip(paths, manifests)):
        problem = checked_files.listed_damage(path.parent, manifest.get("checked", {}))  # an older xel's: none
        if problem is not None:  # nothing can redo a shard here: refused, naming what to redo
            raise CacheError(
                "E404", path=path, detail=f"damaged ({problem}); delete it and {path.with_suffix('.json').name}"
            )
        try:
            with h5py.File(path, "r") as handle:
                attributes = dict(handle.attrs)
        except OSError as exc:
            raise SchemaError("E302", path=path, detail=str(exc)) from None
        if attributes.get("key") != key or attributes.get("encoder_identity") != inputs["encoder"]:
            raise CacheError(
                "E404", path=path, detail="its attributes name another encoder or stage key than its manifest"
            )
    attributes.pop("shard", None)
    stage_run.begin()
    groups = {
        "mentions": merge_group(paths, "mentions", mentions["mention_id"].to_list()),
        "entities": merge_group(paths, "entities", entities["kb_id"].to_list()),
    }
    write_vectors(out_dir / VECTORS, attributes, config.encoder.store_float16, groups)
    share_entity_vectors(config, inputs["encoder"], entities, *groups["entities"][1:])
    counts = {"mentions": mentions.height, "entities": entities.height, "shards": len(paths)}
    for name in ("distinct_texts", "sub_words"):
        counts[name] = int(sum(m["counts"][name] for m in manifests))
    result = stage_run.finish(
        counts, [VECTORS], extra={"encoder_path": str(attributes["encoder_path"]), "shards": len(paths)}
    )
    remove_stale_work(out_dir, key)
    return result
