"""The hot loop: one epoch of training steps, timed, with no host sync between log points.

Per step the host only launches work: it reads no device value, so it runs ahead of the GPU and
the next batch's input work overlaps this one's compute. Every `log_every` steps (and at the end
of the epoch) one all-reduce + `.tolist()` syncs: that is where loss and throughput of all ranks
are read. A stop request is voted on after every step on the host alone (train/stop.py), so every
rank stops at the step after the signal. Time blocked in `next(batches)` is data wait; the rest
of an interval's wall time is compute (exact at log points, because the log syncs).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from pipeline.base import Loader
from pipeline.normalize import model_input
from pipeline.throughput import sync
from train.amp import Precision
from train.distill import Distiller
from train.distributed import DistInfo, all_reduce_sum
from train.metrics_log import MetricsLog, peak_memory_mb
from train.optim import EMA, OptimConfig, lr_at, mix_batch
from train.profile import Profiler
from train.report import format_step
from train.stop import StopFlag, StopVote
from train.summary import WAIT_EDGES_MS

WARMUP_STEPS = 3  # steps per epoch left out of the epoch's timed region (compile, autotune, prefetch fill)


@dataclass
class TrainParts:
    """Everything a training step uses besides the batch: the model, its optimizer, precision,
    loss, EMA, lr schedule, batch mixing and teacher. `model` is what runs forward/backward (DDP
    and/or torch.compile wrapped); the optimizer holds the plain module's parameters."""

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
    distiller: Distiller | None = None  # a frozen teacher whose logits are a second target


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
    position: bytes | None = None  # the loader's position when stopped mid-epoch (for the checkpoint)


def train_step(parts: TrainParts, images: torch.Tensor, labels: torch.Tensor, global_step: int,
               prof: Profiler) -> tuple[torch.Tensor, float]:
    """One optimizer step on one batch; returns (loss as a detached fp32 device scalar, lr).
    It only launches work: nothing here reads a device value, so the host never waits."""
    opt, prec, crit = parts.optimizer, parts.precision, parts.criterion
    lr = lr_at(global_step, parts.total_steps, parts.warmup_steps, parts.peak_lr)
    for group in opt.param_groups:
        group["lr"] = lr
    images = model_input(images)  # a uint8 hand-off (data.output) is normalized here, on the device
    images, partner, lam = mix_batch(images, labels, parts.optim_cfg, parts.mix_seed, global_step)
    with prof.range("forward"), prec.autocast():
        x = prec.inputs(images)
        out = parts.model(x)
        loss = crit(out, labels) if lam == 1.0 else lam * crit(out, labels) + (1 - lam) * crit(out, partner)
        if parts.distiller is not None:  # the teacher sees the same mixed batch
            loss = parts.distiller.loss(out, parts.distiller.logits(x), loss)
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


class StepMeter:
    """One epoch's timing: data wait apart from compute, a timed region that starts after warm-up,
    running loss sums kept on the device (read only at log points)."""

    def __init__(self, info: DistInfo, start_step: int, steps: int, global_batch: int):
        self.info, self.global_batch = info, global_batch
        self.t_epoch = self.t_interval = self.t_timed = time.perf_counter()
        self.timed_from = min(start_step + WARMUP_STEPS, steps - 1)
        self.loss_interval = torch.zeros((), device=info.device)
        self.loss_epoch = torch.zeros((), device=info.device)
        self.wait_interval = self.wait_timed = 0.0
        self.steps_interval = 0
        self.hist = [0] * (len(WAIT_EDGES_MS) + 1)

    def begin(self, step: int) -> None:
        """Call before fetching a step's batch; the timed region starts at warm-up's end."""
        if step == self.timed_from:
            sync(self.info.device)  # once per epoch: warm-up work stays out of the timed region
            self.t_timed, self.wait_timed = time.perf_counter(), 0.0

    def waited(self, seconds: float) -> None:
        self.wait_interval += seconds
        self.wait_timed += seconds
        self.hist[bisect.bisect_right(WAIT_EDGES_MS, 1000 * seconds)] += 1

    def stepped(self, loss: torch.Tensor) -> None:
        self.loss_interval += loss
        self.steps_interval += 1

    def interval(self) -> dict:
        """The log interval's figures (all ranks). Syncs."""
        dev, world = self.info.device, self.info.world
        vals = torch.stack([self.loss_interval, torch.tensor(self.wait_interval, device=dev)])
        loss_sum, wait_sum = all_reduce_sum(vals, self.info).tolist()
        now = time.perf_counter()
        dt, n = now - self.t_interval, self.steps_interval
        figures = {"loss": loss_sum / (world * n), "img_per_s": self.global_batch * n / dt,
                   "data_ms": 1000 * wait_sum / world / n, "compute_ms": 1000 * (dt - wait_sum / world) / n,
                   "peak_mem_mb": peak_memory_mb(dev)}
        self.close_interval()
        self.t_interval = now
        return figures

    def close_interval(self) -> None:
        self.loss_epoch += self.loss_interval
        self.loss_interval.zero_()
        self.wait_interval, self.steps_interval = 0.0, 0

    def result(self, steps_done: int, last_step: int, global_step: int, stopped: bool) -> EpochResult:
        """The epoch's figures (all ranks; syncs). `last_step` is the last step run."""
        t_end = time.perf_counter()
        timed_steps, t_timed = last_step + 1 - self.timed_from, self.t_timed
        if timed_steps <= 0:  # too short to leave warm-up out: time everything
            timed_steps, t_timed = steps_done, self.t_epoch
        timed_s = max(t_end - t_timed, 1e-9)
        world = self.info.world
        wait_sum, loss_sum = all_reduce_sum(
            torch.stack([torch.tensor(self.wait_timed, device=self.info.device), self.loss_epoch]), self.info).tolist()
        return EpochResult(steps_done=steps_done, global_step=global_step, stopped=stopped,
                           loss=loss_sum / world / max(steps_done, 1),
                           img_per_s=self.global_batch * timed_steps / timed_s,
                           data_wait_fraction=min(1.0, wait_sum / world / timed_s),
                           train_s=t_end - self.t_epoch, wait_hist=self.hist)


def train_epoch(parts: TrainParts, loader: Loader, epoch: int, start_step: int, global_step: int,
                log_every: int, info: DistInfo, log: MetricsLog, stop: StopFlag, profiler: Profiler,
                fault: Callable[[int, int], None] | None = None, position: bytes | None = None) -> EpochResult:
    """Run steps start_step..len(loader)-1 of `epoch` (after a mid-epoch resume the loader skips
    the batches already done, from its saved `position` where it has one). `fault(epoch, step)`, if
    given, runs before each step (tests only: train/fault.py). Returns the epoch's numbers."""
    n = len(loader)
    meter = StepMeter(info, start_step, n, loader.batch_size * info.world)
    parts.model.train()
    batches = iter(loader.epoch(epoch, skip=start_step, position=position))
    bar = tqdm(total=n, initial=start_step, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
               disable=None if info.is_main else True)
    log.write = bar.write if info.is_main else print
    vote = StopVote(info)
    stopped, step = False, start_step
    for step in range(start_step, n):
        if fault is not None:
            fault(epoch, step)
        meter.begin(step)
        t0 = time.perf_counter()
        with profiler.range("data"):
            images, labels = next(batches)
        meter.waited(time.perf_counter() - t0)
        loss, lr = train_step(parts, images, labels, global_step, profiler)
        meter.stepped(loss)
        global_step += 1
        bar.update(1)
        profiler.step()
        stopped = vote.cast(stop.requested)
        if (step + 1) % log_every == 0 or step == n - 1:  # the only sync
            m = {"epoch": epoch, "lr": lr, **meter.interval()}
            log.line(format_step(epoch, step + 1, n, m))
            log.record("train", global_step, m)
        elif stopped:
            meter.close_interval()
        if stopped:
            break
    stopped = vote.close() or stopped  # a vote cast at the epoch's last step
    bar.close()
    log.write = print
    steps_done = step + 1 - start_step if n > start_step else 0
    result = meter.result(steps_done, step, global_step, stopped)
    if start_step + steps_done < n:
        result.position = loader.position()  # while the epoch's batches are still open
    return result
