"""Load a multilingual transformer and turn texts into the paper's vectors (§3.1).

Two kinds of vector come out of one forward pass over a text:
- span vectors: max-pool over a span's sub-words of a low hidden layer (`name_layer`);
- context vectors: the first token ([CLS] / `<s>`) of the top layer.
Sub-word spans come from the fast tokenizer's offset mapping, which WordPiece and
SentencePiece tokenizers both give.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.config import EncoderConfig, check_setting
from pipeline.core.devices import device_type, pick_device
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.progress import silence_library_bars
from pipeline.encoders.precision import Precision

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def _inference_mode(function):
    """`@torch.inference_mode()` with torch imported at the call: this module loads without torch
    (stage keys and `xel-cli link`'s checks need the encoder's identity, not torch)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return function(*args, **kwargs)

    return wrapper


@dataclass
class LoadedEncoder:
    name: str
    path: str
    identity: str
    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    precision: Precision
    hidden_size: int
    num_layers: int

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of its precision (bf16, fp16), or None (fp32, int8)."""
        return self.precision.autocast_dtype


def source_problem(name: str, setting: str) -> str | None:
    """Why the encoder `name` (the value of config key `setting`) cannot be a model, said plainly, or None.

    A name that can only be a path (absolute, `./`, `~`, more than one `/`: not a Hugging Face
    `namespace/repo` name) must be a folder holding `config.json`, as `save_pretrained` writes it;
    one that can be a Hugging Face name is left to the loader unless a folder of that name exists.
    Reads a few directory entries: cheap enough to ask before a stage touches its old outputs.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        return f"{setting} names the folder {path}, which holds no config.json, so it is not a model folder"
    if path.exists():
        return f"{setting} names {path}, a file, not a model folder"
    if _reads_as_hub_name(name):
        return None
    return f"{setting} names the folder {path}, which does not exist"


def _reads_as_hub_name(name: str) -> bool:
    """Whether `name` has the form of a Hugging Face model name (`repo` or `namespace/repo`)."""
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ImportError:
        return not name.startswith(("/", ".", "~")) and name.count("/") <= 1
    except ValueError:  # HFValidationError is a ValueError
        return False
    return True


def check_source(name: str, setting: str) -> None:
    """E501 when `name` (config key `setting`) cannot be a model (`source_problem`): said before a stage
    removes or replaces anything it wrote before."""
    from pipeline.encoders.build import DEFAULT_ENCODER

    problem = None if name == DEFAULT_ENCODER else source_problem(name, setting)
    if problem is not None:
        raise ConfigError("E501", name=name, detail=problem)


def load_problem(name: str, path: str, setting: str, exc: Exception) -> str:
    """What E501 says when the loader refused `name` (resolved to `path`): `source_problem` in plain words
    when the name is no model folder, else the loader's own first line."""
    problem = source_problem(path, setting)
    if problem is not None:
        return problem
    said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not Path(path).expanduser().exists():
        return f"no folder {path} exists here, and as a Hugging Face name: {said}"
    return said


def resolve_encoder_path(name: str) -> str:
    """A local folder, the offline default build, or a Hugging Face name (local cache only)."""
    from pipeline.encoders.build import DEFAULT_ENCODER, ensure_default_encoder

    if name == DEFAULT_ENCODER:
        return str(ensure_default_encoder())
    return name


# Files of a model folder that make its vectors: config, tokenizer, weights. Others (README,
# optimizer.pt, trainer_state.json of a fine-tuning run) do not count.
IDENTITY_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin")
IDENTITY_SKIPPED = ("trainer_state.json",)
# Content digests of weight files by (path, size, mtime, inode): hashing a 1 GB model costs
# seconds, and every stage command asks for the identity.
DIGEST_MEMO = "weight-digests.json"
DIGEST_MEMO_ENTRIES = 1000


def encoder_identity(path: str, precision: str = "fp32") -> str:
    """A fingerprint of the encoder: the content of its config, tokenizer and weight files,
    and the resolved `precision` it runs at (`Precision.name`), since that changes its vectors.

    `path` is a local folder, or a Hugging Face name whose cached snapshot is found
    offline; a name with no local snapshot is fingerprinted by the name alone. Weights
    are hashed in full (retrained weights of the same shape must not look the same), with
    their digest remembered per (path, size, mtime, inode) under the xel cache. fp32 adds
    nothing to the digest, so the identities (and caches) of fp32 runs from before the
    setting existed stay valid; the model folder's files-only identity is this at fp32.
    """
    folder = Path(path) if Path(path).is_dir() else _hub_snapshot(path)
    digest = hashlib.blake2b(digest_size=12)
    if precision != "fp32":
        digest.update(f"precision={precision}\0".encode())
    if folder is None:
        digest.update(path.encode())
        return digest.hexdigest()
    for file_path in sorted(folder.iterdir()):
        if not file_path.is_file() or file_path.suffix not in IDENTITY_SUFFIXES or file_path.name in IDENTITY_SKIPPED:
            continue
        digest.update(file_path.name.encode() + b"\0")
        digest.update(
            _weights_digest(file_path).encode()
            if file_path.suffix in (".safetensors", ".bin")
            else file_path.read_bytes()
        )
    return digest.hexdigest()


def _hub_snapshot(name: str) -> Path | None:
    """The local snapshot folder of a Hugging Face model name (named by its commit), if cached."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not a hub name, not cached, or no huggingface_hub: the name alone then
        return None


def _weights_digest(path: Path) -> str:
    """Content hash of a weight file, remembered in the xel cache by its path, size, mtime and inode.

    The memo is a speed-up only: unreadable or unwritable, the file is hashed again.
    """
    from pipeline.core.io import file_fingerprint, write_json_atomic
    from pipeline.encoders.build import default_cache_dir

    real = path.resolve()  # a Hugging Face snapshot links to its blob
    stat = real.stat()
    signature = f"{real}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    memo_path = default_cache_dir() / DIGEST_MEMO
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    if isinstance(memo.get(signature), str):
        return memo[signature]
    content = file_fingerprint(real)
    memo[signature] = content
    try:
        write_json_atomic(memo_path, dict(list(memo.items())[-DIGEST_MEMO_ENTRIES:]))
    except (PipelineError, OSError) as exc:
        logger.debug("cannot remember the digest of %s in %s: %s", real, memo_path, exc)
    return content


def configured_precision(config: EncoderConfig) -> Precision:
    """The precision `config` runs at on this machine (`auto` resolved for its device); E203 for int8
    off a CPU. The device is only read, not checked (a cuda setting on a machine without a GPU
    still resolves, as cuda), so a stage key can be computed where the stage would not run."""
    return Precision.resolve(config.precision, device_type(config.device))


def configured_identity(config: EncoderConfig) -> str:
    """`encoder_identity` of `config`'s encoder at the precision it runs at here (`configured_precision`):
    what stage keys, dense indexes and entity-vector caches are keyed by."""
    return encoder_identity(resolve_encoder_path(config.name), configured_precision(config).name)


def load_encoder(config: EncoderConfig) -> LoadedEncoder:
    """Load `config`'s encoder onto its device at its precision (`configured_precision`), in eval mode.
    Raises `ConfigError` E501 (cannot load), E203 (device, precision or name_layer unusable)."""
    from transformers import AutoModel, AutoTokenizer

    # Our own progress lines cover encoding; the loader's bars would only add noise.
    silence_library_bars()
    path = resolve_encoder_path(config.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        try:
            # Only hidden states are used; a pooler the checkpoint lacks would be random noise in the logs.
            model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "E501", name=config.name, detail=load_problem(config.name, path, "encoder.name", exc)
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("E501", name=config.name, detail="it has no fast tokenizer, which offset mappings need")
    device = pick_device(config.device)
    precision = Precision.resolve(config.precision, device.type)
    num_layers = int(model.config.num_hidden_layers)
    check_setting(
        "[encoder]",
        "name_layer",
        config.name_layer,
        config.name_layer <= num_layers,
        f"{config.name} has only {num_layers} layers (hidden states 0..{num_layers})",
    )
    hidden_size = int(model.config.hidden_size)
    model = precision.apply(model.to(device).eval())
    logger.info("encoder %s on %s at %s", config.name, device, precision.name)
    return LoadedEncoder(
        config.name,
        path,
        encoder_identity(path, precision.name),
        tokenizer,
        model,
        device,
        precision,
        hidden_size,
        num_layers,
    )


def token_span(offsets: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """Sub-word indices [first, last+1) whose character offsets overlap [start, end).

    `offsets` is (n_tokens, 2) from the tokenizer without special tokens. A span that
    overlaps no token (whitespace only) falls back to the nearest token.
    """
    overlapping = np.nonzero((offsets[:, 0] < end) & (offsets[:, 1] > start))[0]
    if overlapping.size:
        return int(overlapping[0]), int(overlapping[-1]) + 1
    nearest = int(np.clip(np.searchsorted(offsets[:, 0], start), 0, max(len(offsets) - 1, 0)))
    return nearest, nearest + 1


def mention_window(n_tokens: int, first: int, last: int, body: int) -> tuple[int, int, int]:
    """(window start, first, last) of a mention's sub-words [first, last) in a context of n_tokens.

    The window holds `body` sub-words (the whole context when it is shorter), centred on
    the mention as the paper does for long contexts; first and last come back in window
    positions. A mention longer than the window keeps its middle `body` sub-words, so the
    span always holds at least one of the mention's own sub-words and never a special token.
    """
    if last - first > body:
        first = first + (last - first - body) // 2
        last = first + body
    window_start = 0
    if n_tokens > body:
        # centre - body // 2 <= first and last <= that + body whenever last - first <= body.
        window_start = int(np.clip((first + last) // 2 - body // 2, 0, n_tokens - body))
    return window_start, first - window_start, last - window_start


def length_batches(sequences: list, pad_id: int, batch_tokens: int, device: torch.device):
    """Yield (indices, input_ids (B, T), attention_mask (B, T)) over `sequences` sorted by length.

    Each batch holds as many sequences as fit `batch_tokens` at its longest member's
    width, so padding stays small; every sequence appears in exactly one batch.
    """
    import torch

    lengths = np.array([len(s) for s in sequences])
    order = np.argsort(lengths, kind="stable")
    position = 0
    while position < len(order):
        # Sorted by length, so the batch's longest is its last; fill up to the token budget.
        end = position + 1
        while end < len(order) and (end - position + 1) * lengths[order[end]] <= batch_tokens:
            end += 1
        batch = order[position:end]
        width = int(lengths[batch[-1]])
        input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        attention = np.zeros((len(batch), width), dtype=np.int64)
        for row, index in enumerate(batch):
            input_ids[row, : lengths[index]] = sequences[index]
            attention[row, : lengths[index]] = 1
        yield batch, torch.from_numpy(input_ids).to(device), torch.from_numpy(attention).to(device)
        position = end


@_inference_mode
def forward_units(
    encoder: LoadedEncoder,
    units: list[np.ndarray],
    spans: list[list[tuple[int, int, int]]],
    name_layer: int,
    batch_tokens: int,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the encoder once over each unit (a token id sequence with special tokens).

    `spans[u]` lists (output row, first, last) sub-word ranges of unit `u`, in the
    unit's own positions. Returns (context vectors (n_units, H), span vectors
    (n_span_rows, H)), float32.
    """
    import torch

    hidden = encoder.hidden_size
    n_span_rows = sum(len(s) for s in spans)
    context_vectors = np.zeros((len(units), hidden), dtype=np.float32)
    span_vectors = np.zeros((n_span_rows, hidden), dtype=np.float32)
    pad_id = encoder.tokenizer.pad_token_id or 0
    for batch, ids_tensor, mask_tensor in length_batches(units, pad_id, batch_tokens, encoder.device):
        with encoder.precision.autocast():
            outputs = encoder.model(input_ids=ids_tensor, attention_mask=mask_tensor, output_hidden_states=True)
        top = outputs.hidden_states[-1]  # (B, T, H)
        low = outputs.hidden_states[name_layer]  # (B, T, H)
        context_vectors[batch] = top[:, 0].float().cpu().numpy()
        rows, pooled = [], []
        for row, unit_index in enumerate(batch):
            for out_row, first, last in spans[unit_index]:
                rows.append(out_row)
                pooled.append(low[row, first:last].amax(dim=0))
        if rows:
            span_vectors[rows] = torch.stack(pooled).float().cpu().numpy()
        if progress is not None:
            progress.update(len(batch))
    return context_vectors, span_vectors


@_inference_mode
def embed_texts(
    encoder: LoadedEncoder, texts: list[str], max_tokens: int, batch_tokens: int, progress=None
) -> np.ndarray:
    """Unit-length mean-pooled top-layer vectors of short texts (names), (len(texts), H).

    This is the sentence-embedding pooling multilingual retrieval models are trained with
    (e5 among them), used for cross-lingual name retrieval in triage — not one of the
    paper's §3.1 ranker features.
    """
    import torch

    if not texts:
        return np.zeros((0, encoder.hidden_size), dtype=np.float32)
    encoded = encoder.tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
    pad_id = encoder.tokenizer.pad_token_id or 0
    vectors = np.zeros((len(texts), encoder.hidden_size), dtype=np.float32)
    for batch, input_ids, mask in length_batches(encoded, pad_id, batch_tokens, encoder.device):
        with encoder.precision.autocast():
            top = encoder.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        summed = (top.float() * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        vectors[batch] = torch.nn.functional.normalize(summed, dim=-1).cpu().numpy()
        if progress is not None:
            progress.update(len(batch))
    return vectors
