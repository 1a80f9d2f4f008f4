"""vectors.h5 and name_pairs.h5: the files encode writes and train, evaluate and studies read.

One module for the writer and every reader, so the format lives in one place. Rows are
keyed by the `id` dataset of their group (`/mentions`, `/entities`, `/names`); readers
join by id, never by row order. The encoder's identity, the pooling and the meaning of each
axis are the file's attributes (`vector_attributes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from pipeline.core.errors import CacheError, SchemaError
from pipeline.core.io import atomic_path, file_fingerprint
from pipeline.core.manifest import stage_key

if TYPE_CHECKING:
    from pipeline.core.config import RunConfig
    from pipeline.encoders.encoder import LoadedEncoder

VECTORS = "vectors.h5"
NAME_PAIRS = "name_pairs.h5"
# Part of name_pairs.h5's key: raise it when what that file holds changes.
NAME_PAIRS_VERSION = 1


def _ids(dataset: h5py.Dataset) -> list[str]:
    """An HDF5 string dataset as Python strings (h5py gives bytes for variable-length UTF-8)."""
    return [value.decode() if isinstance(value, bytes) else value for value in dataset[:]]


def vector_attributes(encoder: LoadedEncoder, config: RunConfig, key: str) -> dict[str, object]:
    """What vectors.h5 says about itself: the encoder, the pooling, the axes and the stage key."""
    return {
        "encoder": encoder.name,
        "encoder_path": encoder.path,
        "encoder_identity": encoder.identity,
        "name_layer": config.encoder.name_layer,
        "name_pooling": "max over the span's sub-words",
        "context_pooling": "first token of the top layer",
        "max_context_tokens": config.encoder.max_context_tokens,
        "axis_0": "row i belongs to id[i]",
        "axis_1": "hidden unit",
        "key": key,
    }


def write_vectors(
    path: Path,
    attributes: dict[str, object],
    store_float16: bool,
    groups: dict[str, tuple[list[str], np.ndarray, np.ndarray]],
) -> None:
    """Write `{group: (ids, name vectors (n, H), context vectors (n, H))}` to `path` atomically."""
    dtype = np.float16 if store_float16 else np.float32
    with atomic_path(path) as temp_path:
        with h5py.File(temp_path, "w") as handle:
            handle.attrs.update(attributes)
            for group_name, (ids, names, contexts) in groups.items():
                group = handle.create_group(group_name)
                group.create_dataset("id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
                chunk = (min(max(len(ids), 1), 4096), names.shape[1])
                group.create_dataset("name", data=names.astype(dtype), chunks=chunk if len(ids) else None)
                group.create_dataset("context", data=contexts.astype(dtype), chunks=chunk if len(ids) else None)


def read_vectors(path: Path, group: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, name vectors (n, H), context vectors (n, H)) of one group, as float32.

    Raises SchemaError E302 when the file or group cannot be read or holds NaN/inf.
    """
    try:
        with h5py.File(path, "r") as handle:
            ids = _ids(handle[group]["id"])
            names = handle[group]["name"][:].astype(np.float32)
            contexts = handle[group]["context"][:].astype(np.float32)
    except (OSError, KeyError) as exc:
        raise SchemaError("E302", path=path, detail=str(exc)) from None
    if not (np.isfinite(names).all() and np.isfinite(contexts).all()):
        raise SchemaError("E302", path=path, detail=f"/{group} holds NaN or infinite values")
    return ids, names, contexts


def vector_name_layer(path: Path) -> int | None:
    """The hidden layer vectors.h5's name vectors were pooled from (its `name_layer` attribute);
    None when the file does not say. E302 when the file cannot be read."""
    try:
        with h5py.File(path, "r") as handle:
            layer = handle.attrs.get("name_layer")
    except OSError as exc:
        raise SchemaError("E302", path=path, detail=str(exc)) from None
    return None if layer is None else int(layer)


def read_vector_ids(path: Path, group: str) -> list[str]:
    """The ids of one group without reading its vectors (E302 when unreadable)."""
    try:
        with h5py.File(path, "r") as handle:
            return _ids(handle[group]["id"])
    except (OSError, KeyError) as exc:
        raise SchemaError("E302", path=path, detail=str(exc)) from None


def name_pairs_key(encode_key: str, pairs_path: Path) -> str:
    """Key of name_pairs.h5: this encode (encoder and its settings) and the pairs file's content."""
    return stage_key(
        "encode-name-pairs", NAME_PAIRS_VERSION, {}, {"encode": encode_key, "name_pairs": file_fingerprint(pairs_path)}
    )


def write_name_pair_vectors(
    path: Path, attributes: dict[str, object], store_float16: bool, names: list[str], vectors: np.ndarray
) -> None:
    """Write the §7.1 pair names and their name vectors (n, H) to `path` atomically, under `/names`."""
    dtype = np.float16 if store_float16 else np.float32
    with atomic_path(path) as temp_path:
        with h5py.File(temp_path, "w") as handle:
            handle.attrs.update(attributes)
            group = handle.create_group("names")
            group.create_dataset("id", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
            group.create_dataset("name", data=vectors.astype(dtype))


def read_name_pair_vectors(path: Path, key: str) -> tuple[list[str], np.ndarray]:
    """(names, name vectors (n, H) float32) from name_pairs.h5, which must carry `key`.

    Raises CacheError E401 when missing (run encode), E407 when made for another key, and
    SchemaError E302 when unreadable.
    """
    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("key") != key:
                raise CacheError(
                    "E407",
                    path=path,
                    stage="encode",
                    detail="was encoded from another name-pairs file or with another encoder",
                )
            names = _ids(handle["names"]["id"])
            vectors = handle["names"]["name"][:].astype(np.float32)
    except FileNotFoundError:
        raise CacheError("E401", path=path, stage="encode") from None
    except (OSError, KeyError) as exc:
        raise SchemaError("E302", path=path, detail=str(exc)) from None
    return names, vectors
