"""How many CPU threads xel's numeric libraries use, chosen by xel rather than left to torch.

torch's default is one OpenMP thread per core the machine has. On a shared or loaded machine
those threads wait on each other at every operation: the demo's training took 359 s with two
threads on a busy 2-core machine and 15 s with one. So xel decides:

- `--threads N` (or `[run] threads`), when given;
- else `OMP_NUM_THREADS`, when set (the usual way to say it on a cluster);
- else the CPUs this process may run on: its affinity mask (`os.sched_getaffinity`, what
  Slurm's `--cpus-per-task` and `taskset` set) capped by a cgroup v2 CPU quota
  (`/sys/fs/cgroup/cpu.max`, what containers and some Slurm setups set).

Models too small to gain from more than one thread (the ranker, trained and scored over
cached vectors: batches of a few thousand rows through layers of a few hundred units) run
on one thread whatever the count (`small_model_threads`), which is also what makes the
ranker's weights the same at any thread count (docs/reproducibility.md).

Nothing here imports torch at module level: `xel-cli score` and `--help` must not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# The ranker's matrices are too small for a second thread to pay for its synchronisation.
SMALL_MODEL_THREADS = 1
# Read at start by OpenMP (torch, faiss), MKL and OpenBLAS (numpy, scikit-learn).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cgroup_cpu_quota(path: Path = CPU_MAX) -> int | None:
    """Whole CPUs a cgroup v2 quota allows (`cpu.max`: "<quota> <period>" in µs, or "max <period>").

    A quota of 1.5 CPUs gives 1 (a second thread would be throttled half the time), never
    less than 1. None when there is no quota or no readable file (cgroup v1, macOS).
    """
    try:
        fields = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.floor(quota / period))


def available_cpus(cpu_max: Path = CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask capped by the cgroup quota (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:  # macOS, Windows: no affinity call
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cpu_max)
    return max(1, min(cpus, quota) if quota is not None else cpus)


def environment_threads(environ: Mapping[str, str]) -> int | None:
    """OMP_NUM_THREADS as a positive count, or None when unset or not a positive integer.

    OpenMP also takes a list ("4,2": per nesting level); its first entry is the count.
    """
    text = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def choose_threads(
    requested: int | None = None, environ: Mapping[str, str] | None = None, cpu_max: Path = CPU_MAX
) -> tuple[int, str]:
    """(thread count, where it came from): `requested` (--threads), else OMP_NUM_THREADS, else the CPUs."""
    if requested is not None:
        return requested, "--threads"
    from_environment = environment_threads(os.environ if environ is None else environ)
    if from_environment is not None:
        return from_environment, "OMP_NUM_THREADS"
    return available_cpus(cpu_max), "available CPUs"


def apply_threads(count: int) -> None:
    """Make `count` the thread count of torch, OpenMP, MKL and OpenBLAS in this process and its children.

    The variables are read when those libraries load, so they are set here, before any is
    imported by the commands; torch, when already loaded (tests, a notebook), is told directly.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(count)
    logger.debug("using %d CPU thread(s)", count)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch on `count` intra-op threads, then restore the count it had."""
    import torch

    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def small_model_threads() -> contextlib.AbstractContextManager[None]:
    """`torch_threads(SMALL_MODEL_THREADS)`: for the ranker, which gains nothing from more threads
    and gives the same weights and scores at any thread count only on a fixed one."""
    return torch_threads(SMALL_MODEL_THREADS)
