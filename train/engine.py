"""The hot loop: one epoch of training steps, timed, with no host sync between log points.

Per step the host only launches work: it reads no device value, so it runs ahead of the GPU
and the next batch's DALI work overlaps this one's compute. Every `log_every` steps (and at the
end of the epoch) one all-reduce + `.tolist()` syncs: that is where loss, throughput and the
stop flag of all ranks are read. Time blocked in `next(batches)` is data wait; the rest of an
interval's wall time is compute (exact at log points, because the log syncs).
"""

from __future__ import annotations

import bisect
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from pipeline.loader import Loader
from train.amp import Precision
from train.distributed import DistInfo, all_reduce_sum
from train.log import WAIT_EDGES_MS, MetricsLog, format_step, peak_memory_mb
from train.optim import EMA, OptimConfig, lr_at, mix_batch
from train.profile import Profiler

WARMUP_STEPS = 3  # steps per epoch left out of the epoch's timed region (compile, autotune, prefetch fill)


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it on the host, finishes the step, checkpoints and
    exits. A second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> StopFlag:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


@dataclass
class StepParts:
    """What one training step needs. `model` is what runs forward/backward (DDP and/or
    torch.compile wrapped); the optimizer holds the plain module's parameters."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    criterion: nn.Module
    ema: EMA | None
    optim_cfg: OptimConfig
    total_steps: int
    warmup_steps: int
    peak_lr: float  # at the end of warmup, for the global batch
    mix_seed: int


@dataclass
class EpochResult:
    steps_done: int  # this epoch's steps completed (== len(loader) unless stopped)
    global_step: int
    stopped: bool  # a stop was requested and agreed by all ranks
    loss: float  # mean training loss over the epoch's steps run here (all ranks)
    img_per_s: float  # global, over the timed region
    data_wait_fraction: float  # of the timed region's wall time, mean over ranks
    train_s: float  # wall time of the whole epoch on this rank
    wait_hist: list[int]  # this rank's steps per data-wait bucket (WAIT_EDGES_MS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(parts: StepParts, images: torch.Tensor, labels: torch.Tensor, global_step: int,
               prof: Profiler) -> tuple[torch.Tensor, float]:
    """One optimizer step on one batch; returns (loss as a detached fp32 device scalar, lr).
    It only launches work: nothing here reads a device value, so the host never waits."""
    opt, prec, crit = parts.optimizer, parts.precision, parts.criterion
    lr = lr_at(global_step, parts.total_steps, parts.warmup_steps, parts.peak_lr)
    for group in opt.param_groups:
        group["lr"] = lr
    images, partner, lam = mix_batch(images, labels, parts.optim_cfg, parts.mix_seed, global_step)
    with prof.range("forward"), prec.autocast():
        out = parts.model(prec.inputs(images))
        loss = crit(out, labels) if lam == 1.0 else lam * crit(out, labels) + (1 - lam) * crit(out, partner)
    opt.zero_grad(set_to_none=True)
    with prof.range("backward"):
        (prec.scaler.scale(loss) if prec.scaler is not None else loss).backward()
    with prof.range("optimizer"):
        if prec.scaler is not None:
            prec.scaler.step(opt)
            prec.scaler.update()
        else:
            opt.step()
        if parts.ema is not None:
            parts.ema.update()
    return loss.detach().float(), lr


def train_epoch(parts: StepParts, loader: Loader, epoch: int, start_step: int, global_step: int,
                log_every: int, info: DistInfo, log: MetricsLog, stop: StopFlag, profiler: Profiler,
                fault: Callable[[int, int], None] | None = None) -> EpochResult:
    """Run steps start_step..len(loader)-1 of `epoch` (skipping the first start_step batches, as
    after a mid-epoch resume). `fault(epoch, step)`, if given, runs before each step (tests only:
    train/fault.py). Returns the epoch's numbers; see EpochResult."""
    n, dev, world = len(loader), info.device, info.world
    global_batch = loader.batch_size * world
    parts.model.train()
    batches = iter(loader.epoch(epoch))
    for _ in range(start_step):  # same order as the uninterrupted run: (seed, epoch, rank) only
        next(batches)
    bar = tqdm(total=n, initial=start_step, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
               disable=None if info.is_main else True)
    log.write = bar.write if info.is_main else print
    t_epoch = t_last = time.perf_counter()
    loss_interval = torch.zeros((), device=dev)  # device-side running sums: no sync per step
    loss_epoch = torch.zeros((), device=dev)
    wait_interval = wait_timed = 0.0
    wait_hist = [0] * (len(WAIT_EDGES_MS) + 1)
    steps_interval, timed_from, t_timed = 0, min(start_step + WARMUP_STEPS, n - 1), t_epoch
    stopped, step = False, start_step
    for step in range(start_step, n):
        if fault is not None:
            fault(epoch, step)
        if step == timed_from:
            _sync(dev)  # once per epoch: start the timed region after warm-up
            t_timed, wait_timed = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        with profiler.range("data"):
            images, labels = next(batches)
        wait = time.perf_counter() - t0
        wait_interval += wait
        wait_timed += wait
        wait_hist[bisect.bisect_right(WAIT_EDGES_MS, 1000 * wait)] += 1

        loss, lr = train_step(parts, images, labels, global_step, profiler)
        loss_interval += loss
        global_step += 1
        steps_interval += 1
        bar.update(1)
        profiler.step()

        last = step == n - 1
        if (step + 1) % log_every == 0 or last:
            # The only sync: sums over ranks of (loss, data wait, stop requests).
            vals = torch.stack([loss_interval, torch.tensor(wait_interval, device=dev),
                                torch.tensor(float(stop.requested), device=dev)])
            loss_sum, wait_sum, stops = all_reduce_sum(vals, info).tolist()
            now = time.perf_counter()
            dt = now - t_last
            m = {
                "epoch": epoch, "lr": lr, "loss": loss_sum / (world * steps_interval),
                "img_per_s": global_batch * steps_interval / dt,
                "data_ms": 1000 * wait_sum / world / steps_interval,
                "compute_ms": 1000 * (dt - wait_sum / world) / steps_interval,
                "peak_mem_mb": peak_memory_mb(dev),
            }
            log.line(format_step(epoch, step + 1, n, m))
            log.record("train", global_step, m)
            loss_epoch += loss_interval
            loss_interval.zero_()
            wait_interval, steps_interval, t_last = 0.0, 0, now
            stopped = stops > 0
        elif world == 1 and stop.requested:
            stopped = True  # one process: no one to agree with, stop after this step
            loss_epoch += loss_interval
        if stopped:
            break
    t_end = time.perf_counter()
    bar.close()
    log.write = print
    steps_done = step + 1 - start_step if n > start_step else 0
    timed_steps = step + 1 - timed_from
    if timed_steps <= 0:  # too short to leave warm-up out: time everything
        timed_steps, t_timed = steps_done, t_epoch
    timed_s = max(t_end - t_timed, 1e-9)
    wait_sum, loss_sum = all_reduce_sum(
        torch.stack([torch.tensor(wait_timed, device=dev), loss_epoch]), info).tolist()
    return EpochResult(
        steps_done=steps_done,
        global_step=global_step,
        stopped=stopped,
        loss=loss_sum / world / max(steps_done, 1),
        img_per_s=global_batch * timed_steps / timed_s,
        data_wait_fraction=min(1.0, wait_sum / world / timed_s),
        train_s=t_end - t_epoch,
        wait_hist=wait_hist,
    )
