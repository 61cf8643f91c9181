"""Timed repeats with a median, and the device flag; GPU timing synchronizes at its boundaries."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import torch

from train.backend import sync


def endless(epoch_batches: Callable[[int], Iterator]) -> Iterator:
    """Batches from epoch 0, 1, 2, ... without end (benchmarks outlast small datasets)."""
    epoch = 0
    while True:
        yield from epoch_batches(epoch)
        epoch += 1


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


def resolve_device(name: str) -> torch.device:
    """'cpu', 'gpu' or 'auto' -> a torch.device; 'gpu' without CUDA is an error."""
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device gpu: no CUDA device here")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
