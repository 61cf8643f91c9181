"""Endless batches for timing (pipeline.throughput.rate), and the device flag."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def endless(epoch_batches: Callable[[int], Iterator]) -> Iterator:
    """Batches from epoch 0, 1, 2, ... without end (benchmarks outlast small datasets)."""
    epoch = 0
    while True:
        yield from epoch_batches(epoch)
        epoch += 1


def resolve_device(name: str) -> torch.device:
    """'cpu', 'gpu' or 'auto' -> a torch.device; 'gpu' without CUDA is an error."""
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device gpu: no CUDA device here")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
