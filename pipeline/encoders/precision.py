"""The numeric precision a transformer runs at: the `[encoder] precision` setting made concrete.

- fp32: as loaded;
- bf16 / fp16: `torch.autocast` around each forward pass (weights stay float32);
- int8: dynamic quantisation of every `nn.Linear` (`torch.ao.quantization.quantize_dynamic`:
  int8 weights, activations quantised per batch), CPU only;
- auto: bf16 on CUDA; on a CPU, bf16 where it has native bf16 arithmetic (the `avx512_bf16` or
  `amx_bf16` flags of /proc/cpuinfo), else fp32. From `bench/encode.py --precisions-only`
  (docs/performance.md): on an AVX2-only CPU bf16 is emulated and 6x slower than fp32; int8 is
  2.1x faster but moves vectors (mean cosine to fp32 0.99 for contexts, 0.98 for mention
  strings), so it is not "equal quality" until a MEANTIME run shows linking quality holds
  (bench/context_width.py), and auto never picks it.

Vectors always leave the encoder as float32 (`.float()`); the precision changes how they are
computed, so it is part of the encoder's identity (`pipeline.encoders.encoder.encoder_identity`).
Encode, dense triage, link and any other loader of a transformer use `Precision.resolve`,
then `apply` on the loaded model and `autocast()` around its forward passes.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.config import PRECISION_EXPECTED, PRECISIONS
from pipeline.core.errors import ConfigError

# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX512-BF16 (Cooper Lake, Zen 4 on)
# and AMX (Sapphire Rapids on). Without them torch emulates bf16 matmuls, slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU in `cpuinfo` (Linux); empty where it is unreadable
    (macOS, Windows), which makes `auto` choose as for a CPU without bf16."""
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def auto_precision(device_type: str, flags: frozenset[str] | None = None) -> str:
    """What `precision = "auto"` means on a device of `device_type` (cuda, cpu, mps) with CPU `flags`
    (read from /proc/cpuinfo when None): bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if device_type == "cuda":
        return "bf16"
    if device_type == "cpu":
        flags = cpu_flags() if flags is None else flags
        return "bf16" if any(flag in flags for flag in CPU_BF16_FLAGS) else "fp32"
    return "fp32"


@dataclass(frozen=True)
class Precision:
    """A resolved precision (fp32, bf16, fp16 or int8) on a device type (cpu, cuda, mps)."""

    name: str
    device_type: str

    @classmethod
    def resolve(
        cls, setting: str, device_type: str, where: str = "[encoder]", flags: frozenset[str] | None = None
    ) -> "Precision":
        """The precision a `setting` means on `device_type`; `auto` by `auto_precision` (CPU `flags`
        from /proc/cpuinfo when None). Raises `ConfigError` E203 naming `where` for a setting not in
        `PRECISIONS`, and for int8 anywhere but on a CPU: its kernels are CPU-only, and no fallback is
        taken, since silently running another precision would give other vectors than asked for."""
        if setting not in PRECISIONS:
            raise ConfigError("E203", where=where, field="precision", value=setting, reason=PRECISION_EXPECTED)
        if setting == "int8" and device_type != "cpu":
            raise ConfigError(
                "E203",
                where=where,
                field="precision",
                value=setting,
                reason=f"int8 dynamic quantisation runs on a CPU only, not {device_type}; "
                f'use bf16 (or auto) on {device_type}, or device = "cpu"',
            )
        name = auto_precision(device_type, flags) if setting == "auto" else setting
        return cls(name, device_type)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype (bf16, fp16) or None (fp32, int8)."""
        return AUTOCAST_DTYPES.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context to run forward passes in: `torch.autocast` for bf16/fp16, else nothing."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` made ready for this precision, for inference: int8 returns a copy whose `nn.Linear`
        layers are dynamically quantised (the embeddings and LayerNorms stay float32); the
        others return `model` as it is (autocast does their work at run time)."""
        if self.name != "int8":
            return model
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            # torch >= 2.10 says torch.ao.quantization moves to torchao; it still ships and works.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
