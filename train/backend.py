"""Backend settings (kernel choice, torch.compile), shared by the trainer and the benchmarks.

The suite's model-only ceiling and the trainer must run the same kernels, or the verdict
compares two different things: both call `configure_backends`.
"""

from __future__ import annotations

import torch


def configure_backends(deterministic: bool) -> None:
    """Deterministic kernels (bit-exact resume on the CPU) or the fastest ones: cudnn.benchmark
    autotuning, TF32 for the fp32 matmuls and convs outside autocast."""
    torch.backends.cudnn.benchmark = not deterministic
    # warn_only: CUDA has no deterministic AdaptiveAvgPool2d backward; bit-exactness is a CPU promise.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def compiled(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """`module` under torch.compile in `mode` (none | default | reduce-overhead | max-autotune), one
    static graph per input shape; `module` itself for none."""
    if mode == "none":
        return module
    return torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)
