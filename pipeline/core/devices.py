"""Which torch device a `device` setting means on this machine; shared by the encoder, train,
evaluate and link, so all of them accept and refuse the same settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.core.config import DEVICE_EXPECTED
from pipeline.core.errors import ConfigError

if TYPE_CHECKING:  # imported where a device is made: checking cpu or auto needs no torch
    import torch


def device_problem(device: str) -> str | None:
    """Why the encoder and ranker cannot run on `device` here, or None when they can: a name
    torch does not parse (gpu, CPU, cuda:x, an empty one), a type xel does not run on (xla,
    meta), or one this machine lacks (cuda without a visible GPU, cuda:N past the last one,
    mps). `auto` and `cpu` are always fine (and need no torch to say so)."""
    if device in ("auto", "cpu"):
        return None
    import torch

    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError):
        return f"not a device torch knows; {DEVICE_EXPECTED}"
    count = torch.cuda.device_count() if kind.type == "cuda" and torch.cuda.is_available() else 0
    if kind.type not in ("cpu", "cuda", "mps"):
        return f"not a device xel runs on; {DEVICE_EXPECTED}"
    if kind.type != "cuda" and kind.index is not None:  # torch.load's map_location takes no cpu:0
        return f"{kind.type} takes no device number; give {kind.type}"
    if kind.type == "cuda" and not count:
        return "no CUDA device is visible here; use cpu (or auto)"
    if kind.type == "cuda" and kind.index is not None and kind.index >= count:
        return f"only {count} CUDA device(s) are visible here (cuda:0 to cuda:{count - 1}); give one of them, or cuda"
    if kind.type == "mps" and not torch.backends.mps.is_available():
        return "no MPS device is available here; use cpu (or auto)"
    return None


def pick_device(setting: str, where: str = "[encoder]") -> torch.device:
    """The torch device of a `device` setting (auto: cuda when visible, else cpu); E203 naming
    `where` (the config section or option) when `device_problem` finds one."""
    import torch

    reason = device_problem(setting)
    if reason is not None:
        raise ConfigError("E203", where=where, field="device", value=setting, reason=reason)
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
