"""The floating-point precision a model trains and evaluates in, and the device it runs on.

bf16 autocast runs the matrix multiplications in bf16 while every weight stays fp32: the optimizer
updates fp32 values (master weights), so small updates are not rounded away, and the loss is summed
in fp32 (``losses.py`` casts the logits before the softmax). It pays only where the hardware
multiplies bf16 natively: a CUDA GPU that has bf16, an x86 CPU with AMX or AVX-512 BF16 (measured on
an AMX Xeon: 2.1 TFLOP/s bf16 against 0.35 fp32). Elsewhere bf16 is emulated and slower than fp32,
so "auto" keeps fp32 there; "bf16" and "fp32" force one or the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import get_args

import torch

from tunesmith.config import PrecisionSetting

PRECISIONS: tuple[str, ...] = get_args(PrecisionSetting)

# torch.cpu.get_capabilities() names; arm64 bf16 is left out: not measured, so it is not assumed fast.
_FAST_CPU_BF16 = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Precision:
    device_type: str  # "cpu" or "cuda"
    bf16: bool

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self) -> torch.autocast:
        """Wrap forward passes only; backward runs each op in the dtype its forward used."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively (faster than fp32), not merely supports it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return any(capabilities.get(name, False) for name in _FAST_CPU_BF16)
    return False


def resolve(setting: PrecisionSetting | str, device: torch.device) -> Precision:
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    return Precision(device.type, fast_bf16(device) if setting == "auto" else setting == "bf16")


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def training_device() -> torch.device:
    """A GPU when there is one (under torchrun, this process's own: LOCAL_RANK), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
