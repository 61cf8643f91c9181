"""Backend settings, the one GPU sync helper and the one timer, shared by the trainer, the
benchmarks and deploy.

The suite's model-only ceiling and the trainer must run the same kernels, or the verdict
compares two different things: both call `configure_backends`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import torch


def configure_backends(deterministic: bool) -> None:
    """Deterministic kernels (bit-exact resume on the CPU) or the fastest ones: cudnn.benchmark
    autotuning, TF32 for the fp32 matmuls and convs outside autocast."""
    torch.backends.cudnn.benchmark = not deterministic
    # warn_only: CUDA has no deterministic AdaptiveAvgPool2d backward; bit-exactness is a CPU promise.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a timer must not stop before the GPU does); no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rate(batches: Iterator, count: Callable[[object], int], device: torch.device, warmup: int, steps: int,
         repeats: int) -> dict:
    """Items/s of an endless batch iterator: `warmup` batches untimed, then `repeats` timed runs of
    `steps` batches each; returns the median and every repeat. `count(batch)` = items in a batch."""
    for _ in range(warmup):
        next(batches)
    sync(device)
    runs = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        for _ in range(steps):
            n += count(next(batches))
        sync(device)
        runs.append(n / (time.perf_counter() - t0))
    return {"per_s": statistics.median(runs), "repeats": runs}
