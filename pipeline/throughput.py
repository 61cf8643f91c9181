"""The one throughput timer (items/s of a batch stream) and the device wait it needs, shared by
the trainer, the benchmarks and deploy. Here, at the bottom of the import graph, so none of them
imports another for it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a timer must not stop before the GPU does); no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def untimed_per_epoch(warmup: int) -> int:
    """Batches read untimed at the start of every epoch of an epoch-bound `rate`: the warm-up, and
    never fewer than one, so an epoch's start (a pipeline built, workers started) is never timed."""
    return max(warmup, 1)


def check_window(epoch_batches: int, warmup: int, steps: int) -> None:
    """ValueError unless one timed window of `steps` batches, after an epoch's untimed lead-in,
    fits in an epoch of `epoch_batches`."""
    lead = untimed_per_epoch(warmup)
    if lead + steps > epoch_batches:
        raise ValueError(f"an epoch of {epoch_batches} batches cannot hold {lead} untimed (--warmup) + {steps} "
                         "timed (--steps) batches, and a timed window must lie inside one epoch")


def rate(batches: Iterator, count: Callable[[object], int], device: torch.device, warmup: int, steps: int,
         repeats: int, epoch_batches: int | None = None, cpu_clock: Callable[[], float] | None = None) -> dict:
    """Items/s of an endless batch iterator: the median of `repeats` timed windows of `steps`
    batches each, and every window's figure. `count(batch)` = items in a batch.

    `cpu_clock`: CPU seconds used so far (e.g. benchmarks.cpu_time.tree_cpu_s), read at the same
    window edges (just outside the wall-clock reads): then also items per CPU-second, `per_cpu_s`
    (median) and `repeats_per_cpu_s` (None for a window that used no measurable CPU).

    `epoch_batches`: the batches in one epoch of `batches`, or None where there are no epochs (a
    batch reused, batches in memory): then `warmup` batches untimed and the windows back to back.
    With epochs, every window lies inside one epoch, after that epoch's first
    `untimed_per_epoch(warmup)` batches; a window that does not fit in what is left of an epoch
    waits for the next one, the rest of this one read untimed. The device is synchronized at each
    window's edges only. Raises ValueError if one window cannot fit in an epoch.
    """
    epoch = math.inf if epoch_batches is None else epoch_batches
    lead = warmup if epoch_batches is None else untimed_per_epoch(warmup)
    if epoch_batches is not None:
        check_window(epoch_batches, warmup, steps)
    left, runs, cpu_runs = 0, [], []  # left: batches in the current epoch (0: the next one starts an epoch)
    for _ in range(repeats):
        if left < steps:  # read the rest of this epoch and the next one's lead-in untimed
            for _ in range(left + lead):
                next(batches)
            left = epoch - lead
        sync(device)
        cpu0 = cpu_clock() if cpu_clock else 0.0
        n, t0 = 0, time.perf_counter()
        for _ in range(steps):
            n += count(next(batches))
        sync(device)
        runs.append(n / (time.perf_counter() - t0))
        if cpu_clock:
            cpu_s = cpu_clock() - cpu0
            cpu_runs.append(n / cpu_s if cpu_s > 0 else None)
        left -= steps
    out = {"per_s": statistics.median(runs), "repeats": runs}
    if cpu_clock:
        measured = [x for x in cpu_runs if x is not None]
        out.update(per_cpu_s=statistics.median(measured) if measured else None, repeats_per_cpu_s=cpu_runs)
    return out
