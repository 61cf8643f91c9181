"""Mixed precision in one place: the autocast context, the input dtype and the grad scaler."""

from __future__ import annotations

import contextlib

import torch

from pipeline.cpu import cpu_flags

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively. A CPU without AVX-512 BF16 or AMX runs bf16
    autocast through reference kernels: 5x slower than fp32 on an AVX2-only EPYC (measured)."""
    if device.type == "cuda":  # not emulated: pre-Ampere GPUs "support" bf16 through fp32 kernels
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_amp(amp: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the device has native bf16, else "off"; other modes as given."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(torch.device(device)) else "off"


class Precision:
    """`amp` is "bf16" (autocast, no scaler: bf16 has fp32's exponent range), "fp16" (autocast
    + GradScaler against gradient underflow), "off" (fp32; the loader's fp16 images are cast), or
    "auto" (bf16 where the device has native bf16, else off)."""

    def __init__(self, amp: str, device: torch.device):
        self.amp, self.device = resolve_amp(amp, device), device
        amp = self.amp
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh autocast context for one forward pass."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.amp])

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        # Under autocast the first conv casts fp16 images itself; without it, the weights are fp32.
        return images.float() if self.amp == "off" else images
