"""Mixed precision in one place: the autocast context, the input dtype and the grad scaler."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """`amp` is "bf16" (autocast, no scaler: bf16 has fp32's exponent range), "fp16" (autocast
    + GradScaler against gradient underflow) or "off" (fp32; the loader's fp16 images are cast)."""

    def __init__(self, amp: str, device: torch.device):
        self.amp, self.device = amp, device
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh autocast context for one forward pass."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.amp])

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        # Under autocast the first conv casts fp16 images itself; without it, the weights are fp32.
        return images.float() if self.amp == "off" else images
