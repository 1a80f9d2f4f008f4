"""Data-parallel training under `torchrun`: who am I, the process group, and the few collectives train needs.

`torchrun --nproc_per_node N cli.py train ...` (or `rerank`) starts N copies of the command with
WORLD_SIZE, RANK and LOCAL_RANK set. Without them (or with WORLD_SIZE=1) everything
here is a no-op and training runs exactly as a single process, with no process group.

Rank 0 is the writer: it alone takes the run lock, writes the config, checkpoints,
model, history and manifests, and runs the stages other than train. The others train
their slice of each batch and wait for it at barriers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipeline.core.devices import pick_device
from pipeline.core.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a process group is used: a single process needs none
    import torch

logger = logging.getLogger(__name__)

# Ranks other than 0 wait for rank 0's triage and encode under `xel-cli run`, which can take
# hours; that wait uses a separate gloo group with this timeout, so the training collectives
# keep torch's default timeout (a hung rank is still found in minutes).
STAGE_WAIT_TIMEOUT = timedelta(days=2)
_wait_group: Any = None


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_environment(environ: Mapping[str, str] = os.environ) -> World:
    """The World torchrun describes in WORLD_SIZE / RANK / LOCAL_RANK; a single process without them."""
    if "WORLD_SIZE" not in environ:
        return World()
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        text = environ.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise ConfigError(
                "E203",
                where="environment (torchrun)",
                field=name,
                value=text,
                reason="must be an integer; start the command with torchrun, or unset it",
            ) from None
    size, rank, local_rank = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ConfigError(
            "E203",
            where="environment (torchrun)",
            field="RANK",
            value=f"{rank} of {size}",
            reason="need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE; start the command with torchrun",
        )
    return World(rank=rank, local_rank=local_rank, size=size)


def uses_cuda(device_setting: str) -> bool:
    """Whether train's `device` setting puts the ranker on a GPU (auto: when one is there)."""
    return pick_device(device_setting, "[train]").type == "cuda"


def training_device(device_setting: str, world: World) -> torch.device:
    """Train's device; under torchrun each process takes the GPU of its LOCAL_RANK."""
    import torch

    device = pick_device(device_setting, "[train]")
    return torch.device("cuda", world.local_rank) if device.type == "cuda" and world.distributed else device


@contextlib.contextmanager
def process_group(world: World, device_setting: str) -> Iterator[World]:
    """Join the process group for the block (NCCL for GPUs, gloo on CPU), then leave it cleanly.

    A no-op for a single process, and when the group is already up (`xel-cli run` opens it
    around all stages; train's own call then changes nothing).
    """
    global _wait_group
    if not world.distributed:
        yield world
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield world
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(
            "E203",
            where="environment (torchrun)",
            field=missing[0],
            value=None,
            reason=f"WORLD_SIZE={world.size} needs the rendezvous address torchrun sets; "
            "start the command with torchrun, or unset WORLD_SIZE",
        )
    backend = "nccl" if uses_cuda(device_setting) else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    # env:// rendezvous: torchrun sets MASTER_ADDR and MASTER_PORT.
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    logger.info("rank %d of %d joined the %s process group", world.rank, world.size, backend)
    try:
        _wait_group = dist.new_group(backend="gloo", timeout=STAGE_WAIT_TIMEOUT)
        yield world
    finally:
        _wait_group = None
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def wait_for_main(world: World) -> None:
    """Block every rank until rank 0 gets here too (it may be running triage and encode meanwhile)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier(group=_wait_group)


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's `value` on every rank (a small picklable object: a flag, a decision)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(value: float, world: World, device: torch.device) -> float:
    if not world.distributed:
        return value
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item())
