"""model.pt: the trained ranker as train writes it and evaluate, studies and link load it.

One module for the writer and every reader. The payload is a dict: `model` (state_dict),
`shape` (RankerShape as a dict), `key` (train's stage key), `best_epoch`, `config` (the
[train] settings), the type vocabularies and training mention ids; or `baseline = "nn"`
for the nearest-neighbour baseline, which has no weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import CacheError
from pipeline.core.io import atomic_path

if TYPE_CHECKING:  # torch is imported where a model is saved or loaded: reading MODEL needs none
    import torch

    from pipeline.model.ranker import NearestNeighbour, Ranker

MODEL = "model.pt"


def save_torch(path: Path, payload: dict) -> None:
    """torch.save `payload` (model.pt's, see above, or a training checkpoint) to a temporary
    name, then rename it: a kill never leaves a half-written file under the final name."""
    import torch

    with atomic_path(path) as temp_path:
        torch.save(payload, temp_path)


def load_model(out_dir: Path, device: torch.device) -> tuple[Ranker | NearestNeighbour, dict]:
    """The trained ranker (best epoch), or the nearest-neighbour baseline, and the saved metadata."""
    import torch

    from pipeline.model.ranker import NearestNeighbour, Ranker, RankerShape

    path = out_dir / MODEL
    if not path.exists():
        raise CacheError("E401", path=path, stage="train")
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
        if saved.get("baseline") == "nn":
            return NearestNeighbour(), saved
        shape = RankerShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["shape"].items()})
        model = Ranker(shape).to(device)
        model.load_state_dict(saved["model"])
    except Exception as exc:  # torch.load / pickle raise many types for a damaged file
        raise CacheError("E402", path=path, detail=f"model cannot be loaded ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model, saved
