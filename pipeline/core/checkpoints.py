"""Reading a stage's training checkpoint back: what train and rerank both resume from."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.errors import CacheError

logger = logging.getLogger(__name__)


def read_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint at `path` (a dict saved with torch.save, holding its stage `key`), or None when there
    is none or it is of other inputs or settings (another key: the caller starts over). E402 when it cannot
    be read. The caller checks that its architecture is the one it will resume."""
    import torch

    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CacheError("E402", path=path, detail=f"checkpoint cannot be read ({str(exc).splitlines()[0]})") from None
    if checkpoint.get("key") != key:
        logger.info("ignoring checkpoint %s: it belongs to other inputs or settings", path)
        return None
    return checkpoint


def refuse_other_shape(path: Path, saved: dict, shape: dict, code: str) -> None:
    """Raise CacheError `code` naming the fields where the checkpoint's architecture `saved` differs from
    the one to resume (`shape`): resuming it would start over silently or fail mid-training."""
    differ = sorted(name for name in set(saved) | set(shape) if saved.get(name) != shape.get(name))
    if differ:
        raise CacheError(code, path=path, detail=f"it differs in {', '.join(differ)}")


def say_resumed(training: str, path: Path, done_epoch: int, last_epoch: int, then: str) -> None:
    """Log what a run resumed from the checkpoint at `path` (holding `done_epoch`) does: train on from
    `done_epoch + 1` ("resuming {training} at epoch N"), or, when `done_epoch` reached `last_epoch` (the last
    epoch, or an early stop), that `training` is complete and the run only does `then`."""
    if done_epoch >= last_epoch:
        logger.info(
            "%s is complete (the checkpoint %s holds epoch %d, the last): nothing is trained again; %s",
            training,
            path,
            done_epoch,
            then,
        )
    else:
        logger.info("resuming %s at epoch %d from %s", training, done_epoch + 1, path)


def discard_checkpoint(path: Path) -> None:
    """Delete a stage's resumable checkpoint at `path`, and its folder once empty: called once the stage's
    manifest is written (its outputs are then what a rerun reads, never the checkpoint), and when a stage
    found up to date still has one (a run killed between its manifest and this)."""
    if path.exists():
        path.unlink()
        logger.info("deleted the checkpoint %s: the stage has finished, so nothing resumes from it", path)
    try:
        path.parent.rmdir()
    except OSError:  # not empty (a file someone put there), or not there
        pass
