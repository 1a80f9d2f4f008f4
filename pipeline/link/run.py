"""`xel-cli link`: a trained linker over a corpus, in chunks that resume, shard and merge.

The mentions are read `chunk_mentions` at a time (`sources.mention_chunks`), so only one
chunk's mentions, vectors and candidates are in memory at a time. Each linked chunk is saved as `chunks/chunk-NNNNNN.parquet`
(atomically, with its counts in a `.json` beside it); a rerun skips saved chunks, so a
killed link resumes after its last finished chunk. `--shard i/n` links chunks i, i+n,
i+2n, ... and records how many chunks the corpus has in `shards/shard-i-of-n.json`;
`--merge` (or an unsharded run, at its end) checks every chunk is there, clusters NILs
over the whole corpus, writes the outputs (`outputs.py`) and `manifest.json` last, then
deletes the chunks. Chunks of other inputs or settings (another key) are deleted first, but
only once every check that can refuse the link has passed (the corpus checks, the model's own),
so a refused link leaves --out as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.core import checked_files
from pipeline.core.errors import CacheError, InputError, warn
from pipeline.core.io import (
    file_fingerprint,
    remove_leftover_temps,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from pipeline.core.manifest import MANIFEST, ManifestHead, is_up_to_date, read_manifest, stage_key, write_manifest
from pipeline.core.progress import progress as progress_counter
from pipeline.core.shards import ShardErrors, finished_shards
from pipeline.formats.inputs import without_entity_type
from pipeline.link.out_folder import (
    CHUNKS,
    SHARDS,
    WORK,
    linked_with,
    record_linked_with,
    recorded_linked_with,
    warn_replaced_links,
)
from pipeline.link.outputs import nil_share, remove_stale_outputs, write_outputs
from pipeline.link.repeats import Amendments, Repeats
from pipeline.link.sources import check_corpus, has_gold, mention_chunks
from pipeline.model.model_folder import ModelFolder, load_model_folder
from pipeline.model.ties import TIED_SHARE_WARN, tie_advice, tied_best

logger = logging.getLogger(__name__)

VERSION = 2  # 2: links carry nil_probability and nil_cut (chunks of 1 lack them)
DEFAULT_CHUNK_MENTIONS = 10_000


@dataclass(frozen=True)
class LinkOptions:
    """One `xel-cli link` call. `shard` = (i, n), i from 0; `merge` joins finished shards."""

    model: Path
    mentions: Path
    out_dir: Path
    docs: Path | None = None
    kb: Path | None = None
    shard: tuple[int, int] | None = None
    merge: bool = False
    score: bool = False
    chunk_mentions: int = DEFAULT_CHUNK_MENTIONS
    device: str | None = None
    # The encoder's precision (auto, fp32, bf16, fp16, int8); None: the model's [encoder] setting.
    precision: str | None = None
    force: bool = False
    # NIL threshold of languages the model has none for (None: the median of its thresholds).
    fallback_threshold: float | None = None
    # Ignore the mentions' entity_type (a TAC .tab's type column too): the ranker's type features see none.
    ignore_entity_type: bool = False
    repeats: Repeats = Repeats()  # --rename-duplicate-ids, --drop-duplicate-spans
    # Old KB id -> new KB id pairs for the model's alias table (`kb_fit.read_kb_map`), for a KB keyed differently.
    kb_map: Path | None = None


@dataclass
class LinkResult:
    """What a link call did; `counts` has mentions, chunks, chunks_resumed, entities_encoded, entities_cached."""

    out_dir: Path
    skipped: bool
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    nil_share: pl.DataFrame | None = None
    metrics: dict | None = None
    mentions_per_second: float = 0.0
    encode_share: float = 0.0
    finished: bool = True  # False for a shard: the merge writes the outputs
    ties: dict | None = None  # `ties.tied_best` over every mention: tied, mentions (with a runner-up), share
    merged_shards: int = 0  # a --merge: how many shards it joined (it links nothing itself)
    # Which KB the model was trained on and which it linked against, and how the model fit it (`Linker.kb`).
    kb: dict | None = None


@dataclass(frozen=True)
class LinkedChunks:
    """What `_link_chunks` did in this process: `counts` (mentions, chunks, chunks_resumed,
    entities_encoded, entities_cached, mentions_resumed), seconds spent linking, and of them encoding."""

    counts: dict[str, int]
    seconds: float = 0.0
    encode_seconds: float = 0.0


@dataclass
class LinkKb:
    """The KB a link runs against: its entities (cached by content) and, for the summary and manifest,
    the report of how the model fits it (`Linker.kb`, or made here when no chunk was linked now)."""

    path: Path
    fingerprint: str
    folder: ModelFolder
    kb_map: Path | None = None
    linker: object | None = None  # the `Linker`, when this call made one

    def entities(self) -> pl.LazyFrame:
        """The KB as `kb_index.kb_entities` keeps it (kb_id, name, type, ...), as the Linker reads it."""
        from pipeline.candidates.kb_index import kb_entities
        from pipeline.core.store import kb_index_root

        return pl.scan_parquet(kb_entities(self.path, kb_index_root(self.fingerprint), self.fingerprint))

    def ids(self) -> tuple[pl.LazyFrame, Path]:
        """The KB's entities and path, for --score's check of gold ids (W702)."""
        return self.entities(), self.path

    def report(self) -> dict:
        """`Linker.kb`: the KB trained on, the KB linked against, the id map, what carried over."""
        if self.linker is not None:
            return self.linker.kb
        from pipeline.link.kb_fit import fit_report

        return fit_report(self.folder, self.entities(), self.path, self.fingerprint, self.kb_map)[1]


def link_key(options: LinkOptions, model_fingerprint: str, kb_fingerprint: str, precision: str = "fp32") -> str:
    """Hash of the model, the inputs' content, the KB's content and the settings that change the output."""
    inputs = {"model": model_fingerprint, "mentions": file_fingerprint(options.mentions), "kb": kb_fingerprint}
    if options.docs is not None:
        inputs["docs"] = file_fingerprint(options.docs)
    settings = {"chunk_mentions": options.chunk_mentions, "score": options.score}
    if options.fallback_threshold is not None:  # it decides NIL for unseen languages; absent, old keys hold
        settings["fallback_threshold"] = options.fallback_threshold
    if precision != "fp32":  # what the encoder runs at here changes its vectors; fp32 adds nothing, so old keys hold
        settings["precision"] = precision
    if options.ignore_entity_type:  # likewise
        settings["ignore_entity_type"] = True
    if options.repeats.rename_ids:  # likewise
        settings["rename_duplicate_ids"] = True
    if options.repeats.drop_spans:  # likewise
        settings["drop_duplicate_spans"] = True
    if options.kb_map is not None:  # absent, old keys hold
        inputs["kb_map"] = file_fingerprint(options.kb_map)
    return stage_key("link", VERSION, settings, inputs)


def link_precision(options: LinkOptions, folder: ModelFolder) -> str:
    """The precision the model's encoder runs at in this link: `--precision` or the model's setting,
    resolved for `--device` or the model's device; E203 for one not known, or int8 off a CPU."""
    from pipeline.core.devices import device_type
    from pipeline.encoders.precision import Precision

    settings = dict(folder.meta.get("encoder", {}).get("settings") or {})
    setting = options.precision or str(settings.get("precision", "auto"))
    where = "--precision" if options.precision else f"{folder.path / 'model.json'} [encoder]"
    return Precision.resolve(setting, device_type(options.device or str(settings.get("device", "auto"))), where).name


def _chunk_path(out_dir: Path, index: int) -> Path:
    return out_dir / CHUNKS / f"chunk-{index:06d}.parquet"


def _chunk_record(out_dir: Path, index: int) -> Path:
    """The chunk's record (`checked_files`): its counts and what was written, saved after the chunk."""
    return _chunk_path(out_dir, index).with_suffix(".json")


def _forget_chunk_record(out_dir: Path, index: int) -> None:
    """Delete chunk `index`'s record and, when the record lists it, its parquet; never another
    chunk's file that a record copied or swapped from it may list."""
    checked_files.forget(_chunk_record(out_dir, index), [_chunk_path(out_dir, index).name])


def _chunk_damage(out_dir: Path, index: int) -> str | None:
    """What is wrong with chunk `index` and its record (`checked_files.damage`), a record written for
    another chunk included; None when both are as written."""
    return checked_files.damage(_chunk_record(out_dir, index), [_chunk_path(out_dir, index).name])


def _saved_chunk(out_dir: Path, index: int, key: str) -> bool:
    """Whether chunk `index` is saved whole by the link of `key`: its record is there, matches what is
    on disk and names that key (`_chunk_key`)."""
    return _chunk_damage(out_dir, index) is None and _chunk_key(out_dir, index) == key


def _chunk_key(out_dir: Path, index: int) -> str | None:
    """The link key chunk `index`'s record names (`link_key` of the link that made it); None when it
    names none (a chunk of an older xel) or cannot be read."""
    try:
        key = checked_files.read_content(_chunk_record(out_dir, index)).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def _chunk_index(path: Path) -> int | None:
    """The index of a chunk file `chunk-NNNNNN.parquet` (None for another name)."""
    digits = path.stem.removeprefix("chunk-")
    return int(digits) if digits.isdigit() else None


def _foreign_chunks(out_dir: Path, key: str) -> list[int]:
    """The finished chunks in `out_dir` (whole records) that name another key than `key`, or none."""
    indexes = sorted(i for i in map(_chunk_index, (out_dir / CHUNKS).glob("chunk-*.parquet")) if i is not None)
    return [i for i in indexes if _chunk_damage(out_dir, i) is None and _chunk_key(out_dir, i) != key]


def _key_mismatch(found: str | None, key: str) -> str:
    """Why a chunk recording the key `found` is not of the link of `key`, for W705/E711/E715."""
    if found is None:
        return "its record names no link key: an older xel made it"
    return f"its record names the key {found[:8]}, this link's is {key[:8]}: another model, input, --kb or option"


def _forget_damaged_chunk(out_dir: Path, index: int, problem: str) -> None:
    """Delete chunk `index`, not saved whole (`problem`: what `checked_files.damage` found), so it is
    linked again: with W403 when its record says it was finished, silently when the record is missing
    (killed before the record was written)."""
    record, path = _chunk_record(out_dir, index), _chunk_path(out_dir, index)
    if record.is_file():
        warn(logger, "W403", detail=problem, path=path)
    _forget_chunk_record(out_dir, index)
    path.unlink(missing_ok=True)


def _old_key(out_dir: Path) -> str | None:
    """The key of the link whose chunks and work files are in `out_dir` (None: there are none)."""
    key_path = out_dir / WORK / "key.txt"
    if not key_path.exists():
        return None
    try:
        return key_path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""  # unreadable: no key, so not this link's


def _refuse_other_links(out_dir: Path, key: str, shard: tuple[int, int], force: bool) -> None:
    """A shard refuses (E715) when another key's chunks or shard records are there, or the records of
    shards cut into another count: shards take no lock, so those may be its siblings' work, and one
    shard given other options by mistake must neither wipe them nor leave a set no --merge can join."""
    if force:
        return
    foreign = _foreign_chunks(out_dir, key)
    if foreign:
        raise CacheError(
            "E715",
            path=_chunk_path(out_dir, foreign[0]),
            detail=f"{len(foreign)} finished chunk(s) of another link ({_key_mismatch(_chunk_key(out_dir, foreign[0]), key)})",
        )
    old = _old_key(out_dir)
    if old is not None and old != key:
        linked = [*(out_dir / CHUNKS).glob("chunk-*.parquet"), *(out_dir / SHARDS).glob("shard-*.json")]
        if linked:
            raise CacheError(
                "E715",
                path=out_dir,
                detail=f"{len(linked)} finished chunk(s) or shard record(s) of "
                f"another link (its key {old[:8]}, this one {key[:8]}: another model, input, --kb, --score "
                "or --chunk-mentions)",
            )
    index, count = shard
    others = sorted(
        path.name
        for path in (out_dir / SHARDS).glob("shard-*-of-*.json")
        if not path.name.endswith(f"-of-{count}.json")
    )
    if others:
        raise CacheError(
            "E715",
            path=out_dir / SHARDS,
            detail=f"the records of shards cut into another count "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}), and this is shard {index}/{count}",
        )


def _forget_other_keys(out_dir: Path, key: str, force: bool, identity: dict[str, str]) -> None:
    """Delete chunks, work and shard files of another key (or all with --force): they never resume.
    Says first (W704) when the links there are of another model or KB (`identity`, `linked_with`)."""
    warn_replaced_links(out_dir, identity)
    old = _old_key(out_dir)
    if force or (old is not None and old != key):
        finished = sorted((out_dir / CHUNKS).glob("chunk-*.parquet"))
        if finished and not force:  # F9: say why finished work is dropped
            why = (
                "work/key.txt cannot be read"
                if not old
                else f"work/key.txt names the key {old[:8]}, this link's is {key[:8]}"
            )
            warn(logger, "W705", path=out_dir / CHUNKS, count=len(finished), why=why)
        for name in (CHUNKS, WORK, SHARDS):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    else:  # work/key.txt is this link's or gone: each chunk's own record says whose it is
        foreign = _foreign_chunks(out_dir, key)
        if foreign:
            first = _chunk_path(out_dir, foreign[0])
            why = f"{first.name}: {_key_mismatch(_chunk_key(out_dir, foreign[0]), key)}"
            warn(logger, "W705", path=out_dir / CHUNKS, count=len(foreign), why=why)
            for index in foreign:
                _forget_chunk_record(out_dir, index)
                _chunk_path(out_dir, index).unlink(missing_ok=True)
    write_text_atomic(out_dir / WORK / "key.txt", key + "\n")
    record_linked_with(out_dir, identity)


def _keeps_work(options: LinkOptions, key: str) -> bool:
    """Whether the chunks and work files in --out are this link's and stay (same key, no --force)."""
    return not options.force and _old_key(options.out_dir) == key


def _links_a_chunk(options: LinkOptions, key: str, total: int) -> bool:
    """Whether this call links any chunk (some of its chunks are not saved yet, or will be deleted)."""
    mine = range(total) if options.shard is None else range(options.shard[0], total, options.shard[1])
    keeps = _keeps_work(options, key) or (_old_key(options.out_dir) is None and not options.force)
    return any(not (keeps and _saved_chunk(options.out_dir, index, key)) for index in mine)


@contextlib.contextmanager
def _checked_corpus(options: LinkOptions, key: str, context_chars: int) -> Iterator[tuple[int, Amendments]]:
    """Run the corpus checks (`sources.check_corpus`: every chunk read, ids, spans and document
    languages across chunks; E107 for no mention) and yield the chunk count and the amendments of
    repeated ids and spans (`repeats`).

    They need the docs as Parquet (`work/docs.parquet`); unless this link's own work folder
    already has them, they are written into a scratch folder in --out (`.corpus-check.*.tmp`,
    removed on leaving) and moved into work/ only when the block ends without error, so a
    refused corpus adds nothing to --out.
    """
    work = options.out_dir / WORK
    if _keeps_work(options, key) and (work / "docs.parquet").is_file():
        scratch = None
    else:  # --out exists when the CLI calls (`out_folder`); a script calling `run` may name a new one
        options.out_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".corpus-check.", suffix=".tmp", dir=options.out_dir))
    try:
        chunks = mention_chunks(
            options.mentions, options.docs, options.chunk_mentions, context_chars, options.score, scratch or work
        )
        total, amendments = check_corpus(chunks, options.mentions, options.repeats)
        if total == 0:
            raise InputError("E107", path=options.mentions)
        yield total, amendments
        if scratch is not None and (scratch / "docs.parquet").is_file():
            work.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / "docs.parquet", work / "docs.parquet")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def run(options: LinkOptions) -> LinkResult:
    """Link, one shard of it, or the merge; see the module doc. Errors: E7xx, E1xx of the inputs."""
    started = time.time()
    out_dir = options.out_dir
    folder = _model_folder(options)
    kb_path = _checked_inputs(options, folder)
    kb_fingerprint = file_fingerprint(kb_path)
    key = link_key(options, folder.fingerprint, kb_fingerprint, link_precision(options, folder))
    kb = LinkKb(kb_path, kb_fingerprint, folder, options.kb_map)
    if not options.force and is_up_to_date(out_dir, key):  # a shard or merge of a finished link too
        if options.shard is None:  # an older xel's relink may have left another link's outputs beside these
            remove_stale_outputs(out_dir, read_manifest(out_dir)["outputs"])
        return LinkResult(out_dir, skipped=True, seconds=time.time() - started)
    # Every check that can refuse this link runs before anything in --out changes, so a refused
    # link leaves the folder as it was: a finished link's outputs and manifest, another link's chunks.
    if options.merge:
        total, shards = _finished_shards(out_dir, key)
        (out_dir / MANIFEST).unlink(missing_ok=True)  # outputs being redone never look finished
        result = _finish(options, key, total, started, {"mentions": 0, "chunks_resumed": total}, kb)
        return dataclasses.replace(result, merged_shards=shards)
    if options.shard is not None:
        _refuse_other_links(out_dir, key, options.shard, options.force)
    context_chars = int(folder.meta["inputs"]["context_chars"])
    total, amendments = _take_over_out(options, key, kb, context_chars)
    with _unfinished_work_dropped(options):
        if options.shard is None:
            remove_leftover_temps(out_dir)  # after the corpus check's scratch folder is gone
        (out_dir / MANIFEST).unlink(missing_ok=True)  # outputs being redone never look finished
        linked = _link_chunks(options, kb.linker, context_chars, key, amendments)
    if linked.counts["chunks_resumed"]:
        logger.info("resumed: %d chunk(s) were already linked in %s", linked.counts["chunks_resumed"], out_dir / CHUNKS)
    if options.shard is not None:
        return _shard_done(options, key, total, linked, started)
    return _finish(options, key, total, started, linked.counts, kb)


def _model_folder(options: LinkOptions) -> ModelFolder:
    """The model folder (`load_model_folder`, E701-E706) with --fallback-threshold applied; before it loads,
    --docs must exist (E108) and --device must run here (E203), whether or not any chunk is left to link."""
    if options.docs is not None and not options.docs.exists():
        raise InputError("E108", path=options.docs)
    if options.device is not None:
        from pipeline.link.linker import check_device

        check_device(options.device)
    folder = load_model_folder(options.model)
    if options.fallback_threshold is not None:
        folder = dataclasses.replace(folder, policy=folder.policy.with_unseen_threshold(options.fallback_threshold))
    return folder


def _take_over_out(options: LinkOptions, key: str, kb: LinkKb, context_chars: int) -> tuple[int, Amendments]:
    """Run the corpus checks and, where this call links a chunk, load the linker (`kb.linker`; the model's
    own refusals, E702-E705, E203 --device, come now); only then clear --out of another key's work (`run`
    then sweeps temporary files and the manifest, as it links). The corpus's chunk count, and what each
    chunk amends (`repeats`)."""
    out_dir = options.out_dir
    with _checked_corpus(options, key, context_chars) as (total, amendments):
        if _links_a_chunk(options, key, total):
            from pipeline.link.linker import Linker

            kb.linker = Linker(kb.folder, kb.path, options.device, kb.fingerprint, options.precision, options.kb_map)
        if options.shard is None:  # shards write at once, so only a locked run may sweep temporary files
            remove_leftover_temps(out_dir / CHUNKS)
        identity = linked_with(options.model, kb.folder.fingerprint, kb.path, kb.fingerprint)
        _forget_other_keys(out_dir, key, options.force, identity)
    return total, amendments


@contextlib.contextmanager
def _unfinished_work_dropped(options: LinkOptions) -> Iterator[None]:
    """Run the block; when it fails (not Ctrl-C: an interrupted link keeps its work, to resume where it
    was), `_drop_unfinished_work` in --out, unless this is a shard, whose siblings may be using work/."""
    try:
        yield
    except Exception:
        if options.shard is None:
            _drop_unfinished_work(options.out_dir)
        raise


def _drop_unfinished_work(out_dir: Path) -> None:
    """After a link failed: leave in --out only what a rerun resumes. Finished chunks stay, with the work
    files that say whose they are (work/key.txt, work/linked_with.json); with none, work/ goes whole, and
    chunks/ and shards/ when empty. (The failed chunk's own encoding is gone already: `_link_chunks`.)"""
    for encoding in (out_dir / WORK).glob("encode-*"):
        shutil.rmtree(encoding, ignore_errors=True)
    if not any(True for _ in (out_dir / CHUNKS).glob("chunk-*.parquet")):
        shutil.rmtree(out_dir / WORK, ignore_errors=True)
    for name in (CHUNKS, SHARDS):
        with contextlib.suppress(OSError):  # not there, or not empty
            (out_dir / name).rmdir()


def _checked_inputs(options: LinkOptions, folder) -> Path:
    """The KB to link against, once every input file is there (E706, E108) and `--score` has gold (E709)."""
    kb_path = options.kb or Path(folder.meta["kb"]["path"])
    if not kb_path.is_file():
        raise InputError("E706", path=kb_path, model=options.model)
    if not options.mentions.exists():
        raise InputError("E108", path=options.mentions)
    if options.kb_map is not None and not options.kb_map.is_file():
        raise InputError("E108", path=options.kb_map, hint=" (--kb-map)")
    if options.score and not options.merge and not has_gold(options.mentions):
        raise InputError("E709", path=options.mentions)  # now, not after linking every chunk
    return kb_path


def _link_chunks(options: LinkOptions, linker, context_chars: int, key: str, amendments: Amendments) -> LinkedChunks:
    """Link every chunk of this process's share not saved yet by this link (`key`), each saved (and
    sealed, naming `key`) as it finishes."""
    out_dir = options.out_dir
    counts = {
        "mentions": 0,
        "chunks": 0,
        "chunks_resumed": 0,
        "entities_encoded": 0,
        "entities_cached": 0,
        "mentions_resumed": 0,
    }
    linked_seconds = encode_seconds = 0.0
    chunks = mention_chunks(
        options.mentions, options.docs, options.chunk_mentions, context_chars, options.score, out_dir / WORK
    )
    with progress_counter(None, "link", "mentions") as progress:
        for index, read in chunks:  # the same `total` chunks the corpus check read
            if options.shard is not None and index % options.shard[1] != options.shard[0]:
                continue
            problem = _chunk_damage(out_dir, index)  # one check: resume or redo
            if problem is None and _chunk_key(out_dir, index) != key:  # a sibling shard's of another key, since
                found = _chunk_key(out_dir, index)
                warn(logger, "W705", path=_chunk_path(out_dir, index), count=1, why=_key_mismatch(found, key))
                problem = "another link's"
                _forget_chunk_record(out_dir, index)
            if problem is None:
                counts["chunks_resumed"] += 1
                counts["mentions_resumed"] += int(checked_files.read_content(_chunk_record(out_dir, index))["mentions"])
                continue
            _forget_damaged_chunk(out_dir, index, problem)
            mentions = amendments.apply(read())
            mentions = without_entity_type(mentions) if options.ignore_entity_type else mentions
            stats, result = _link_one_chunk(out_dir, index, linker, mentions, key)
            for name in ("mentions", "entities_encoded", "entities_cached"):
                counts[name] += stats[name]
            counts["chunks"] += 1
            linked_seconds += result.seconds
            encode_seconds += result.encode_seconds
            progress.update(mentions.height)
            logger.info(
                "chunk %d: %d mentions in %.1fs (%.1f mentions/s), %d entities encoded, %d from the cache",
                index,
                mentions.height,
                result.seconds,
                mentions.height / max(result.seconds, 1e-9),
                result.entities_encoded,
                result.entities_cached,
            )
            del mentions, result
            _release_freed_memory()
    return LinkedChunks(counts, linked_seconds, encode_seconds)


def _link_one_chunk(out_dir: Path, index: int, linker, mentions: pl.DataFrame, key: str) -> tuple[dict, object]:
    """Link chunk `index` (`mentions`), save it and seal its record (last), which names the link's `key`
    (so a chunk is never resumed into another link's outputs); (its stats, the `ChunkResult`).

    Its encoder sub-chunks (work/encode-NNNNNN) resume a killed chunk and are deleted once it is saved.
    When it fails (a full disk), they go too, with any part of the chunk not sealed:
    the rerun starts the chunk afresh, as what made it fail may change what it encodes.
    """
    encoding = out_dir / WORK / f"encode-{index:06d}"
    try:
        result = linker.link_chunk(mentions, encoding)
        stats = {
            "mentions": mentions.height,
            "entities_encoded": result.entities_encoded,
            "entities_cached": result.entities_cached,
            "seconds": result.seconds,
            "encode_seconds": result.encode_seconds,
        }
        write_parquet_atomic(result.frame, _chunk_path(out_dir, index))
        checked_files.seal(_chunk_record(out_dir, index), [_chunk_path(out_dir, index)], {**stats, "key": key})  # last
    except Exception:  # not Ctrl-C: the sub-chunks of an interrupted chunk resume it
        shutil.rmtree(encoding, ignore_errors=True)
        if not _saved_chunk(out_dir, index, key):
            _forget_chunk_record(out_dir, index)
            _chunk_path(out_dir, index).unlink(missing_ok=True)
        raise
    shutil.rmtree(encoding, ignore_errors=True)
    return stats, result


def _shard_done(options: LinkOptions, key: str, total: int, linked: LinkedChunks, started: float) -> LinkResult:
    """Record this shard's share as done (`shards/shard-i-of-n.json`), for `--merge` to find."""
    out_dir = options.out_dir
    index, count = options.shard
    # This shard's whole share: the mentions linked now and those of its chunks that were kept.
    counts = dict(linked.counts)
    resumed = counts.pop("mentions_resumed")
    counts = {
        **counts,
        "mentions": counts["mentions"] + resumed,
        "mentions_linked_now": counts["mentions"],
        "chunks": counts["chunks"] + counts["chunks_resumed"],
    }
    write_json_atomic(
        out_dir / SHARDS / f"shard-{index}-of-{count}.json",
        {"key": key, "shard": [index, count], "chunks_total": total, "counts": counts},
    )
    seconds = time.time() - started
    return LinkResult(
        out_dir,
        skipped=False,
        seconds=seconds,
        counts=counts,
        finished=False,
        mentions_per_second=counts["mentions_linked_now"] / max(seconds, 1e-9),
        encode_share=linked.encode_seconds / max(linked.seconds, 1e-9),
    )


def _release_freed_memory() -> None:
    """Hand the chunk's freed heap back to the OS (glibc's malloc_trim) before the next chunk.

    Nothing is kept from one chunk to the next, but many differently sized encoder batches
    can leave glibc's heap holding freed memory; trimming keeps that from adding up.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _checked_chunks_total(out_dir: Path, records: list[dict]) -> int:
    """The corpus's chunk count, as every shard record says it (`chunks_total`); E413 naming the record
    when one says no count, says another than shard 0's, or says fewer chunks than are saved: a merge
    that believed it would join part of the corpus and then delete the rest."""
    from pipeline.core.config import MAX_COUNT

    count = len(records)

    def refuse(index: int, detail: str) -> CacheError:
        options = "the same model, inputs and options"
        path = out_dir / SHARDS / f"shard-{index}-of-{count}.json"
        return CacheError("E413", path=path, shard=f"{index}/{count}", detail=detail, stage="link", options=options)

    totals = [record.get("chunks_total") for record in records]
    for index, total in enumerate(totals):
        if not isinstance(total, int) or isinstance(total, bool) or not 1 <= total <= MAX_COUNT:
            raise refuse(index, f"its chunks_total is {total!r}, not a count of chunks")
    indexes = [i for i in map(_chunk_index, (out_dir / CHUNKS).glob("chunk-*.parquet")) if i is not None]
    saved = max(indexes, default=-1) + 1  # every shard finished: chunks 0 .. chunks_total - 1 are saved
    for index, total in enumerate(totals):
        if total < saved:
            raise refuse(index, f"its chunks_total is {total}, but {_chunk_path(out_dir, saved - 1).name} is saved too")
    if len(set(totals)) > 1:  # the one that is not the saved chunks' count is the wrong one
        index = next((i for i, total in enumerate(totals) if total != saved), 1)
        other = next(t for i, t in enumerate(totals) if i != index)
        raise refuse(index, f"its chunks_total {totals[index]} differs from another shard's {other}")
    return totals[0]


def _finished_shards(out_dir: Path, key: str) -> tuple[int, int]:
    """(the corpus's chunk count, the shard count), once every shard of this key has finished (E711
    naming a missing one)."""
    errors = ShardErrors(
        none_finished=lambda: CacheError(
            "E711",
            path=out_dir / SHARDS,
            detail="no shard of this link (same model, inputs and settings) has finished; "
            "--merge must be given the shards' own --mentions, --docs, --kb, --kb-map, --score, --chunk-mentions, "
            "--fallback-threshold, --ignore-entity-type, --rename-duplicate-ids and --drop-duplicate-spans",
        ),
        cut_differently=lambda counts: CacheError(
            "E711",
            path=out_dir / SHARDS,
            detail=f"its shards were cut in {counts} parts; delete the set you do not want",
        ),
        missing=lambda index, count: CacheError(
            "E711",
            path=out_dir / SHARDS / f"shard-{index}-of-{count}.json",
            detail=f"shard {index}/{count} has not finished; run `xel-cli link --shard {index}/{count}` "
            "with the same model, inputs and options",
        ),
        stage="link",
        options="the same model, inputs and options",
    )
    records = finished_shards(out_dir / SHARDS, "shard", key, errors)
    total = _checked_chunks_total(out_dir, records)
    for index in range(total):  # a --merge cannot redo a chunk: a damaged one is refused, naming what to redo
        record = _chunk_record(out_dir, index)
        problem = _chunk_damage(out_dir, index) if _chunk_path(out_dir, index).is_file() else None
        if problem is not None:
            shard = f"{index % len(records)}/{len(records)}"
            raise CacheError(
                "E711",
                path=_chunk_path(out_dir, index),
                detail=(
                    f"damaged ({problem}); delete it, {record.name} and {SHARDS}/shard-{shard.replace('/', '-of-')}.json, "
                    f"run `xel-cli link --shard {shard}` with the same options again"
                ),
            )
    return total, len(records)


def _finish(
    options: LinkOptions, key: str, total: int, started: float, counts: dict[str, int], kb: LinkKb
) -> LinkResult:
    """Cluster NILs over every chunk, write the outputs and manifest.json, delete the chunks.
    `counts`: this call's (`LinkedChunks.counts`; a --merge's: none linked, every chunk resumed)."""
    out_dir = options.out_dir
    paths, stats, frame = _read_linked_chunks(options, total, key)
    policy = kb.folder.policy
    policy.warn_unseen(frame)
    clustered = policy.cluster(frame)
    ties = _warned_ties(clustered, options.mentions, policy.artifact["method"] == "reader")
    outputs, metrics = write_outputs(paths, clustered, out_dir, options.score, options.mentions, kb.ids)
    remove_stale_outputs(out_dir, outputs)  # an earlier link's gold.tab or metrics.json: not this link's
    seconds = time.time() - started
    summary = _link_summary(stats, total, counts, seconds)
    shares = nil_share(clustered)
    kb_report = kb.report()
    head = ManifestHead(
        "link",
        key,
        inputs={"model": str(options.model), "mentions": str(options.mentions)},
        settings={"chunk_mentions": options.chunk_mentions, "score": options.score},
        started=started,
    )
    extra = {
        "nil_share": shares.to_dicts(),
        "tied_best": ties,
        "linked_with": recorded_linked_with(out_dir),
        "kb": kb_report,
    }
    write_manifest(out_dir, head, summary, outputs, extra)
    for name in (CHUNKS, WORK, SHARDS):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    return LinkResult(
        out_dir,
        skipped=False,
        seconds=seconds,
        counts={name: value for name, value in summary.items() if name not in _TIMINGS},
        nil_share=shares,
        metrics=metrics,
        ties=ties,
        kb=kb_report,
        mentions_per_second=counts.get("mentions", 0) / max(seconds, 1e-9),
        encode_share=summary["encode_share"],
    )


def _read_linked_chunks(options: LinkOptions, total: int, key: str) -> tuple[list[Path], list[dict], pl.DataFrame]:
    """(the chunks' paths, their records' counts, every linked mention without its candidate lists),
    once all `total` chunks are saved whole by this link (`key`) (E711 naming the first that is not,
    or one of another link; E107 for none)."""
    out_dir = options.out_dir
    if total == 0:
        # A link or shard of this xel never gets here with no chunk (`_checked_corpus` refuses an empty
        # corpus first), but a --merge reads `total` from shard records, and a shard of an older xel
        # (same key) recorded an empty corpus as chunks_total 0: E107, not an IndexError at paths[0].
        raise InputError("E107", path=options.mentions)
    paths = [_chunk_path(out_dir, index) for index in range(total)]
    # A --merge cannot redo a chunk (E711 names the shard to rerun); a plain link that finds one
    # gone (deleted while it ran) is told to run again, which links just that one (E717).
    code = "E711" if options.merge else "E717"
    shards = len(list((out_dir / SHARDS).glob("shard-*-of-*.json"))) if options.merge else 0

    def redo(index: int) -> str:  # what links chunk `index` again before the merge
        return f", and run `xel-cli link --shard {index % shards}/{shards}` again" if shards else ""

    foreign = [i for i in range(total) if _chunk_damage(out_dir, i) is None and _chunk_key(out_dir, i) != key]
    if foreign:
        raise CacheError(
            code,
            path=paths[foreign[0]],
            detail=f"a finished chunk of another link ({_key_mismatch(_chunk_key(out_dir, foreign[0]), key)}); "
            f"delete it and {paths[foreign[0]].with_suffix('.json').name}{redo(foreign[0])}",
        )
    missing = [index for index in range(total) if not _saved_chunk(out_dir, index, key)]
    if missing:
        raise CacheError(
            code,
            path=paths[missing[0]],
            detail=f"{len(missing)} of {total} chunks are not linked, this one the first{redo(missing[0])}",
        )
    stats = [checked_files.read_content(path.with_suffix(".json")) for path in paths]
    # Every mention without its candidate lists: NIL clusters span the corpus, the lists are written chunk by chunk.
    columns = [name for name in pl.read_parquet_schema(paths[0]) if name != "candidates"]
    frame = pl.concat([pl.read_parquet(path, columns=columns) for path in paths], how="vertical_relaxed")
    repeated = frame.filter(pl.col("mention_id").is_duplicated())
    if repeated.height:  # each mention is linked in one chunk: a repeat means a chunk is not the one it says
        mention_id = repeated["mention_id"][0]
        holding = [
            index
            for index, path in enumerate(paths)
            if pl.read_parquet(path, columns=["mention_id"])["mention_id"].is_in([mention_id]).any()
        ]
        names = " and ".join(f"{paths[i].name} (with its .json)" for i in holding)
        raise CacheError(
            code,
            path=out_dir / CHUNKS,
            detail=f"mention {mention_id!r} is linked in more than one chunk; delete {names}"
            + "".join(redo(i) for i in holding),
        )
    return paths, stats, frame


def _warned_ties(clustered: pl.DataFrame, mentions: Path, reader_decides: bool = False) -> dict:
    """`ties.tied_best` of the linked mentions, with W703 when more than `TIED_SHARE_WARN` of them tie, unless
    the reader decides (it links its own most probable candidate: the ranker's ties then link nothing)."""
    ties = tied_best(clustered)
    if ties["share"] > TIED_SHARE_WARN and not reader_decides:
        warn(
            logger,
            "W703",
            tied=ties["tied"],
            mentions=ties["mentions"],
            percent=f"{ties['share']:.0%}",
            path=mentions,
            advice=tie_advice(ties),
        )
    return ties


# The summary's timings, kept out of `LinkResult.counts`.
_TIMINGS = ("seconds", "linking_seconds", "encode_share")


def _link_summary(stats: list[dict], total: int, counts: dict[str, int], seconds: float) -> dict:
    """The manifest's counts: mentions and entities over every chunk's record (`stats`), chunks, those
    resumed and the mentions linked by this call (`counts`), and its timings (`_TIMINGS`)."""
    totals = {name: int(sum(s[name] for s in stats)) for name in ("mentions", "entities_encoded", "entities_cached")}
    all_seconds = sum(s["seconds"] for s in stats)
    return {
        **totals,
        "chunks": total,
        "chunks_resumed": counts.get("chunks_resumed", 0),
        "mentions_linked_now": counts.get("mentions", 0),
        "seconds": round(seconds, 3),
        "linking_seconds": round(all_seconds, 3),
        "encode_share": sum(s["encode_seconds"] for s in stats) / max(all_seconds, 1e-9),
    }
