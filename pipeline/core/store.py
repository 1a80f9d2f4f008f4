"""The one store that outlives a run: KB indexes and entity vectors, keyed by KB content and encoder.

Triage and encode fill it as `xel-cli link` does, and all three read it, so a link after a
run embeds no KB name and encodes no entity the run already did. Both parts live under
`$XEL_CACHE` (default `~/.cache/xel/`), never in a run or link folder (a run's
`encode/vectors.h5` stays its own documented output):
- `kb-index/<KB fingerprint>/`: the KB as Parquet, its name and four-gram indexes and the
  dense name index (`pipeline/candidates/kb_index.py` builds each once, under a temporary name);
- `entity-vectors/<encoder key>/`: the four-vector entity encodings (name and context),
  one row per distinct (name, description) content. The encoder key hashes the encoder's
  identity and the settings that change vectors, so another encoder or `name_layer` gets
  its own store. Rows are stored in parts of three `.npy` files and a record of them
  (`part-*.check.json`, `pipeline/core/checked_files.py`: sizes, shapes, checksums, finite
  values) written last, so a part counts only once whole; parallel shards each write their
  own parts. A part that no longer matches its record is a miss: deleted with one `[W402]`,
  and its rows are encoded again.

A cache that cannot be written (a read-only shared cache, a folder of another user: `unwritable`)
is read as it is. What it lacks is made for the process alone, in a private temporary folder that
is deleted when it is done with (entity-vector parts, `EntityVectorStore.add`; KB indexes,
`pipeline/candidates/kb_index.py`), with one `[W404]` saying why it is not cached: the results are
those of a writable cache, and nothing is written there. A full disk stays `[E406]` (free space).

A KB with a hundred added entities therefore encodes only those hundred (the others'
content is cached), and a second corpus against the same KB encodes only entities no
earlier corpus had among its candidates. Clear everything with `rm -rf ~/.cache/xel/kb-index
~/.cache/xel/entity-vectors` (or under `$XEL_CACHE`); the next link rebuilds what it needs.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core import checked_files
from pipeline.core.errors import CacheError, warn
from pipeline.core.io import atomic_path

logger = logging.getLogger(__name__)

KB_INDEX = "kb-index"
ENTITY_VECTORS = "entity-vectors"
# Raise when the way entity vectors are made changes (encode's plan_entities), so old rows are not reused.
# 2: parts are read only with their record (`RECORD_SUFFIX`); older parts have none.
STORE_VERSION = 2
RECORD_SUFFIX = ".check.json"
# What the system says of a folder this process may not write: a read-only mount, no permission.
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def unwritable(folder: Path) -> str | None:
    """None when this process can write into `folder` (made if missing), else why not, in the system's
    words ("Read-only file system", "Permission denied"): tried, as the permission bits do not tell a
    read-only mount or root's rights. CacheError E406 for any other failure (a full disk: free space)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".xel-probe.", suffix=".tmp", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:
            return exc.strerror or str(exc)
        raise CacheError("E406", path=folder, detail=exc.strerror or str(exc)) from None
    return None


def private_folder(prefix: str) -> Path:
    """A new folder of this process's own in the system's temporary folder ($TMPDIR), for what an
    unwritable cache lacks; its caller deletes it (`weakref.finalize`, `atexit`)."""
    try:
        return Path(tempfile.mkdtemp(prefix=prefix))
    except OSError as exc:
        raise CacheError("E406", path=Path(tempfile.gettempdir()), detail=exc.strerror or str(exc)) from None


# The private folder that stands in for each unwritable cache folder in this process, by (folder, prefix).
_STAND_INS: dict[tuple[Path, str], Path] = {}


def stand_in_folder(root: Path, prefix: str, reason: str, what: str, cached: str) -> Path:
    """The private folder (`private_folder(prefix)`) that stands in for the unwritable cache folder `root`
    in this process, deleted when it ends; made on first use, with one `[W404]` saying why (`reason`)
    and what is therefore not cached (`what`; `cached`: the pronoun for it, "it" or "them")."""
    key = (root, prefix)
    if key not in _STAND_INS:
        _STAND_INS[key] = private_folder(prefix)
        atexit.register(shutil.rmtree, _STAND_INS[key], True)
        warn(logger, "W404", path=root, reason=reason, what=what, cached=cached)
    return _STAND_INS[key]


def made_stand_in(root: Path, prefix: str) -> Path | None:
    """The folder `stand_in_folder` made for `root` and `prefix` in this process, or None."""
    return _STAND_INS.get((root, prefix))


def cache_root() -> Path:
    """`$XEL_CACHE` if set, else `~/.cache/xel` (the same folder as the offline encoder build)."""
    configured = os.environ.get("XEL_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "xel"


def entity_vector_store(encoder_identity: str, settings: dict, float16: bool = False) -> "EntityVectorStore":
    """The entity-vector store of one encoder (`encoder_key` of its identity and vector-changing settings)."""
    return EntityVectorStore(cache_root() / ENTITY_VECTORS / encoder_key(encoder_identity, settings), float16=float16)


def kb_index_root(kb_fingerprint: str) -> Path:
    """Folder of one KB's indexes (entities, names, dense), shared by every link of that KB."""
    return cache_root() / KB_INDEX / kb_fingerprint


def encoder_key(encoder_identity: str, settings: dict) -> str:
    """Key of an entity-vector store: the encoder's identity and the settings that change vectors. The
    precision is in the identity as it resolves on the machine (`configured_identity`), not here as
    written: `auto` and what it means there share one store."""
    wanted = {k: settings[k] for k in ("name_layer", "max_context_tokens", "max_name_tokens") if k in settings}
    payload = repr((STORE_VERSION, encoder_identity, sorted(wanted.items())))
    return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


def content_keys(entities: pl.DataFrame) -> list[str]:
    """One key per entity row from what its vectors are made of: the name and the description.

    (encode's `plan_entities` reads only these two; the KB id and type do not change vectors.)
    """
    return [
        hashlib.blake2b(f"{name}\0{description or ''}".encode(), digest_size=16).hexdigest()
        for name, description in zip(entities["name"].to_list(), entities["description"].to_list())
    ]


class EntityVectorStore:
    """Entity (name, context) vectors by content key, in parts on disk; see the module doc.

    `folder` is the shared store; where it cannot be written, new parts go to a private temporary
    folder (`private`, deleted with this object), read as the shared ones are, with one `[W404]`."""

    def __init__(self, folder: Path, float16: bool = False) -> None:
        self.folder = folder
        self.dtype = np.float16 if float16 else np.float32
        self.private: Path | None = None
        self._probed, self._unwritable = False, None  # whether `folder` was tried for writing; why it failed
        self._loaded: set[str] = set()
        # part: the path of a part's files without their suffix (in the shared or the private folder).
        self._index = pl.DataFrame(schema={"key": pl.String, "part": pl.String, "row": pl.Int64})

    def refresh(self) -> None:
        """Read the keys of parts written since the last look (by this or a parallel process).

        A part is read only when its record is there (written last) and every file matches it;
        a damaged part is deleted with one `[W402]` naming the file, so its rows are a miss.
        """
        frames = [self._index]
        for folder in (self.folder, self.private):
            for record in sorted(folder.glob(f"part-*{RECORD_SUFFIX}")) if folder and folder.is_dir() else ():
                part = str(folder / record.name.removesuffix(RECORD_SUFFIX))
                if part in self._loaded:
                    continue
                problem = checked_files.damage(record)
                if problem is not None:
                    warn(logger, "W402", detail=problem, entry=f"{part}.*")
                    checked_files.forget(record)
                    self._loaded.add(part)  # not looked at again in this process, even where it could not be deleted
                    continue
                keys = np.load(f"{part}.keys.npy").astype(str)
                frames.append(pl.DataFrame({"key": keys, "part": part, "row": np.arange(len(keys), dtype=np.int64)}))
                self._loaded.add(part)
        self._index = pl.concat(frames).unique(subset="key", keep="first", maintain_order=True)

    def writable(self) -> str | None:
        """None when the shared store can be written, else why not (`unwritable`; asked once)."""
        if not self._probed:
            self._unwritable, self._probed = unwritable(self.folder), True
        return self._unwritable

    def _part_folder(self) -> Path:
        """Where `add` writes: the shared store, or (it being unwritable) the private folder, made on first
        use with one `[W404]` saying why the vectors are not cached."""
        reason = self.writable()
        if reason is None:
            return self.folder
        if self.private is None:
            self.private = private_folder("xel-entity-vectors-")
            weakref.finalize(self, shutil.rmtree, self.private, True)
            warn(
                logger,
                "W404",
                path=self.folder,
                reason=reason,
                what="the entity vectors it lacks are encoded for this link alone and not cached (a later link "
                "encodes them again); the results are the same",
                cached="them",
            )
        return self.private

    def __len__(self) -> int:
        return self._index.height

    def contains(self, keys: list[str]) -> np.ndarray:
        """(n,) bool: which of `keys` the store holds, without reading any vectors."""
        self.refresh()
        return pl.Series(keys, dtype=pl.String).is_in(self._index["key"].implode()).to_numpy()

    def lookup(self, keys: list[str], hidden: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found (n,) bool, name vectors (n, H), context vectors (n, H)) float32; rows not found are 0."""
        self.refresh()
        found = np.zeros(len(keys), dtype=bool)
        names = np.zeros((len(keys), hidden), dtype=np.float32)
        contexts = np.zeros((len(keys), hidden), dtype=np.float32)
        wanted = pl.DataFrame(
            {"key": keys, "position": np.arange(len(keys), dtype=np.int64)}, schema_overrides={"key": pl.String}
        )
        hits = wanted.join(self._index, on="key")
        for (part,), group in hits.group_by("part"):
            positions, rows = group["position"].to_numpy(), group["row"].to_numpy()
            names[positions] = np.load(f"{part}.name.npy", mmap_mode="r")[rows]
            contexts[positions] = np.load(f"{part}.context.npy", mmap_mode="r")[rows]
            found[positions] = True
        return found, names, contexts

    def add(self, keys: list[str], names: np.ndarray, contexts: np.ndarray) -> None:
        """Store new rows as one part; its record goes last, so a killed write is never read. Into the shared
        store, or where it cannot be written, into this object's private folder (`_part_folder`)."""
        finite = np.isfinite(names).all(axis=1) & np.isfinite(contexts).all(axis=1)  # (n,); NaN rows stay a miss
        keys, names, contexts = [key for key, ok in zip(keys, finite) if ok], names[finite], contexts[finite]
        if not keys:
            return
        folder, part = self._part_folder(), f"part-{uuid.uuid4().hex}"
        files = []
        try:
            for suffix, array in (("name", names), ("context", contexts), ("keys", np.asarray(keys, dtype="S32"))):
                files.append(folder / f"{part}.{suffix}.npy")
                with atomic_path(files[-1]) as temp_path:
                    with open(temp_path, "wb") as handle:
                        np.save(handle, array.astype(self.dtype) if suffix != "keys" else array)
                        handle.flush()
                        os.fsync(handle.fileno())
            checked_files.seal(folder / f"{part}{RECORD_SUFFIX}", files)
        except Exception:  # a full disk, a read-only store: no part without its record is left behind
            for path in files:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise
