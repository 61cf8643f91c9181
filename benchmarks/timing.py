"""Measuring helpers shared by the benchmarks: timed repeats with a median, and the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a timer must not stop before the GPU does)."""
    if device.type == "cuda":
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


def machine(device: torch.device) -> dict:
    """What the figures were measured on: CPU, cores, GPU, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
           "device": str(device)}
    try:
        import nvidia.dali

        out["dali"] = nvidia.dali.__version__
    except ImportError:
        out["dali"] = None
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return out


def resolve_device(name: str) -> torch.device:
    """'cpu', 'gpu' or 'auto' -> a torch.device; 'gpu' without CUDA is an error."""
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device gpu: no CUDA device here")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
