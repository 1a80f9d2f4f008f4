"""The `[encoder] precision` setting: its checks, what auto picks, the identity it adds, its vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_mention_records
from pipeline.core.config import EncoderConfig
from pipeline.core.errors import ConfigError
from pipeline.encoders.encoder import configured_identity, embed_texts, encoder_identity, forward_units, load_encoder
from pipeline.encoders.precision import Precision, auto_precision, cpu_flags


@pytest.mark.parametrize("value", ["fp8", "int4", "FP32", ""])
def test_an_unknown_precision_is_e203(value: str) -> None:
    with pytest.raises(ConfigError, match=r"E203.*\[encoder\]: precision") as error:
        EncoderConfig(precision=value)
    assert "int8" in error.value.message  # the message lists what may be given


@pytest.mark.parametrize("value", ["auto", "fp32", "bf16", "fp16", "int8"])
def test_every_precision_is_accepted(value: str) -> None:
    assert EncoderConfig(precision=value).precision == value


@pytest.mark.parametrize("device_type", ["cuda", "mps"])
def test_int8_off_a_cpu_is_refused_not_replaced(device_type: str) -> None:
    with pytest.raises(ConfigError, match="E203") as error:
        Precision.resolve("int8", device_type)
    assert "CPU only" in error.value.message and "bf16" in error.value.message


def test_int8_on_cuda_is_refused_before_any_stage_key(tiny_encoder_dir: Path) -> None:
    """A stage key is computed without the GPU being there; int8 on cuda is an error already then."""
    with pytest.raises(ConfigError, match="E203"):
        configured_identity(EncoderConfig(name=str(tiny_encoder_dir), device="cuda:0", precision="int8"))


@pytest.mark.parametrize(
    "device_type, flags, expected",
    [
        ("cuda", frozenset(), "bf16"),
        ("cpu", frozenset({"avx2", "avx512_bf16"}), "bf16"),
        ("cpu", frozenset({"avx2", "amx_bf16", "amx_tile"}), "bf16"),
        ("cpu", frozenset({"avx2", "fma"}), "fp32"),  # bf16 emulated: slower than fp32 (docs/performance.md)
        ("cpu", frozenset(), "fp32"),
        ("mps", frozenset(), "fp32"),
    ],
)
def test_auto_picks_by_device_and_cpu_flags(device_type: str, flags: frozenset, expected: str) -> None:
    assert auto_precision(device_type, flags) == expected
    assert Precision.resolve("auto", device_type, flags=flags) == Precision(expected, device_type)


def test_cpu_flags_come_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "avx512_bf16", "amx_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()  # not Linux: auto takes the CPU as bf16-less


def test_the_precision_is_part_of_the_identity(tiny_encoder_dir: Path) -> None:
    files_only = encoder_identity(str(tiny_encoder_dir))
    by_precision = {name: encoder_identity(str(tiny_encoder_dir), name) for name in ("fp32", "bf16", "fp16", "int8")}
    assert by_precision["fp32"] == files_only  # fp32 runs from before the setting keep their keys and caches
    assert len(set(by_precision.values())) == 4
    configured = {
        name: configured_identity(EncoderConfig(name=str(tiny_encoder_dir), device="cpu", precision=name))
        for name in ("auto", "fp32", "int8")
    }
    assert configured["int8"] == by_precision["int8"]
    assert configured["fp32"] == files_only
    assert configured["auto"] == by_precision[auto_precision("cpu")]


def _cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (vectors * reference).sum(axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_vectors_stay_close_to_fp32_and_float32(tiny_encoder_dir: Path, precision: str) -> None:
    def load(name: str):
        return load_encoder(EncoderConfig(name=str(tiny_encoder_dir), device="cpu", precision=name))

    reference, encoder = load("fp32"), load(precision)
    assert encoder.precision == Precision(precision, "cpu") and encoder.identity != reference.identity

    def quantised(model: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())

    assert quantised(encoder.model) == (12 if precision == "int8" else 0)  # 2 layers x (q, k, v, out, up, down)
    assert quantised(reference.model) == 0  # int8 quantises a copy, not the loaded model in place
    texts = [record["text"] for record in tiny_mention_records()]
    units = [np.asarray(ids) for ids in reference.tokenizer(texts)["input_ids"]]
    spans = [[(row, 1, 3)] for row in range(len(units))]
    for run in (lambda e: forward_units(e, units, spans, 1, 1024), lambda e: (embed_texts(e, texts, 32, 1024),)):
        for got, expected in zip(run(encoder), run(reference)):
            assert got.dtype == np.float32
            cosines = _cosines(got, expected)
            assert cosines.min() > 0.95, cosines
            assert not np.array_equal(got, expected)  # the precision did change the computation


def test_the_autocast_context_of_each_precision() -> None:
    assert Precision("bf16", "cpu").autocast_dtype is torch.bfloat16
    with Precision("bf16", "cpu").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
    for name in ("fp32", "int8"):
        with Precision(name, "cpu").autocast():
            assert not torch.is_autocast_enabled("cpu")
    linear = torch.nn.Linear(4, 4)
    assert Precision("fp32", "cpu").apply(linear) is linear and Precision("bf16", "cpu").apply(linear) is linear
