"""`python -m train --config X.yaml [key=value ...]`: build everything, run the epochs, record.

Exit codes: 0 done (or stopped cleanly by SIGTERM/SIGINT/stop_after_epoch, with a checkpoint),
2 bad config, data that does not fit it, unusable checkpoint/weights (one line on stderr, before
any training), or a bad shard met while training or a checkpoint that cannot be written (one line
on stderr naming the file); 1 an input pipeline failure that is not about the data (one line).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import build_model, flops_per_image, freeze_stages, load_torchvision_state_dict, stored_model_config
from pipeline import fatal
from pipeline.atomic import atomic_write
from pipeline.base import Loader
from pipeline.loader import build_loader
from pipeline.pt_file import CheckpointError, safe_load
from pipeline.shards import ShardError
from train import checkpoint as ckpt
from train import distributed, fault
from train.amp import Precision
from train.backend import compiled, configure_backends
from train.checkpoint import Progress
from train.config import Config, ConfigError, TrainConfig, load_config, to_dict, to_yaml
from train.distill import Distiller, load_teacher
from train.distributed import DistInfo
from train.engine import TrainParts, train_epoch
from train.epoch_record import continues, epoch_record, merged
from train.evaluate import evaluate
from train.metrics_log import MetricsLog
from train.optim import EMA, build_optimizer, peak_lr
from train.profile import Profiler
from train.provenance import provenance
from train.report import format_epoch, format_eval, format_summary
from train.stop import StopFlag
from train.summary import summarize, write_summary


def image_size_at(epoch: int, resize: list[list[int]], default: int) -> int:
    """Train crop side (px) for `epoch`: the last [start_epoch, size] with start_epoch <= epoch."""
    size = default
    for start, px in resize:
        if start <= epoch:
            size = px
    return size


def set_determinism(cfg: Config, rank: int) -> None:
    """Seed every RNG; deterministic kernels (bit-exact resume) or the fastest ones. The host RNGs
    are the same on every rank (the model's init); each rank's GPU RNG is its own, or every rank
    would draw the same dropout masks."""
    torch.manual_seed(cfg.train.seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(cuda_seed(cfg.train.seed, rank))
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    configure_backends(cfg.train.deterministic)


def cuda_seed(seed: int, rank: int) -> int:
    """This rank's GPU RNG seed: (seed, rank) hashed, so no two ranks share a stream."""
    return random.Random(f"cuda/{seed}/{rank}").getrandbits(63)


def epochs_to_run(train_cfg: TrainConfig) -> int:
    """Epochs this run trains to: train.epochs, or stop_after_epoch if sooner (the schedule is
    still train.epochs long)."""
    return min(train_cfg.epochs, train_cfg.stop_after_epoch or train_cfg.epochs)


def memory_format(cfg: Config) -> torch.memory_format:
    """The memory format the model and teacher live in (train.channels_last)."""
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def find_start(cfg: Config, info: DistInfo) -> tuple[str, dict] | None:
    """The checkpoint to resume from as (path, state), or None. Rank 0 picks the file (so all
    ranks agree even if a file changes meanwhile); every rank then loads it."""
    choice = cfg.checkpoint.resume
    path = None
    if info.is_main:
        if choice == "auto":
            found = ckpt.find_resume(cfg.run_dir)
            path = str(found[0]) if found else None
        elif choice != "none":
            path = choice
    if info.world > 1:
        box = [path]
        torch.distributed.broadcast_object_list(box, src=0)
        path = box[0]
    return (path, ckpt.load_checkpoint(path)) if path else None


def finetune_source(cfg: Config) -> tuple[Config, object | None]:
    """The fine-tuning weights file (train.finetune.weights), read once, and `cfg` with the
    architecture it stores (a pruned file from deploy.prune carries its conv widths); (cfg, None)
    when not fine-tuning. CheckpointError naming the file when it cannot be used."""
    path = cfg.train.finetune.weights
    if not path:
        return cfg, None
    weights = safe_load(path, "weights file (train.finetune.weights)")
    try:
        return dataclasses.replace(cfg, model=stored_model_config(weights, cfg.model, path)), weights
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def load_weights(net: nn.Module, weights: object, path: str) -> list[str]:
    """Fine-tuning start: a torchvision-format state dict (or a firehose checkpoint's "model"),
    read from `path`; returns the parameters left fresh (the new head)."""
    state = weights.get("model", weights) if isinstance(weights, dict) else weights
    try:
        return load_torchvision_state_dict(net, state)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not fit {type(net).__name__}: {e}") from None


def evaluate_all(net: nn.Module, ema: EMA | None, val_loader: Loader, epoch: int, precision: Precision,
                 info: DistInfo, log: MetricsLog) -> dict:
    """Exact validation of the model and of its EMA (one validation pipeline, reused): the epoch
    record's eval fields. "selected" names the better of the two, whose top-1/5 best.pt is chosen by."""
    t0 = time.perf_counter()
    for module in (net, ema.module if ema is not None else None):  # evaluate what the checkpoint holds
        if module is not None:
            distributed.broadcast_buffers(module, info)
    m = evaluate(net, val_loader, epoch, precision, info)
    log.line(format_eval(epoch, m, "model"))
    out = {"top1": m["top1"], "top5": m["top5"], "val_count": m["count"], "val_expected": m["expected"],
           "selected": "model", "select_top1": m["top1"], "select_top5": m["top5"]}
    if ema is not None:
        e = evaluate(ema.module, val_loader, epoch, precision, info)
        log.line(format_eval(epoch, e, "EMA"))
        out.update(ema_top1=e["top1"], ema_top5=e["top5"])
        if e["top1"] > m["top1"]:
            out.update(selected="ema", select_top1=e["top1"], select_top5=e["top5"])
    out["eval_s"] = time.perf_counter() - t0
    return out


def build_loaders(cfg: Config, info: DistInfo) -> tuple[Loader, Loader]:
    """(train, val) loaders, the train one with its size schedule (train.resize) and the epochs
    it will read; a batch or rank count that does not fit the shards is a ConfigError."""
    args = (info.rank, info.world, info.device, cfg.model.num_classes, info.local_world)
    try:
        train = build_loader(cfg.data, "train", *args, epochs=epochs_to_run(cfg.train),
                             size_at=lambda epoch: image_size_at(epoch, cfg.train.resize, cfg.data.image_size))
        val = build_loader(cfg.data, "val", *args)
    except ShardError:
        raise
    except ValueError as e:  # no full batch per rank, more ranks than samples
        raise ConfigError(f"config: {e}") from None
    classes = train.split.classes
    if classes and len(classes) != cfg.model.num_classes:
        raise ConfigError(f"config: 'model.num_classes' is {cfg.model.num_classes} but {cfg.data.path} "
                          f"has {len(classes)}")
    return train, val


def build_teacher(cfg: Config) -> nn.Module | None:
    """The distillation teacher on the CPU, or None (distill.teacher empty)."""
    if not cfg.distill.teacher:
        return None
    with torch.random.fork_rng(devices=[]):  # its throwaway init must not move the student's
        return load_teacher(cfg.distill, cfg.model.num_classes, cfg.model.in_channels)


def build_distiller(teacher: nn.Module | None, cfg: Config, device: torch.device, log: MetricsLog) -> Distiller | None:
    """The teacher on `device`, compiled like the student, in a Distiller; None without one."""
    if teacher is None:
        return None
    gflop = flops_per_image(teacher, cfg.data.image_size).flops / 1e9
    teacher.to(device, memory_format=memory_format(cfg))
    log.line(f"distilling from {cfg.distill.teacher} ({cfg.distill.teacher_model}, {gflop:.2f} GFLOP/img "
             f"forward, counted in img/s): alpha {cfg.distill.alpha}, temperature {cfg.distill.temperature}")
    distiller = Distiller(teacher, cfg.distill.alpha, cfg.distill.temperature)
    distiller.teacher = compiled(distiller.teacher, cfg.train.compile)  # one static graph per image size
    return distiller


def start_log(cfg: Config, info: DistInfo) -> tuple[MetricsLog, str]:
    """The run folder with its config.yaml (rank 0), and the log opened with the run's provenance
    and resolved config; returns (log, the device's name)."""
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", to_yaml(cfg).encode())
    log = MetricsLog(run_dir, info.is_main)
    prov = provenance(info.device, info.world)
    log.line("provenance: " + " ".join(f"{k}={v}" for k, v in prov.items()))
    log.line("config:\n" + to_yaml(cfg).rstrip())
    log.record("provenance", 0, {**prov, "config": to_dict(cfg)})
    return log, prov["device"]


def build_net(cfg: Config, start: tuple[str, dict] | None, weights: object | None, log: MetricsLog) -> nn.Module:
    """The model with its starting weights (a checkpoint's, the fine-tuning `weights`, or fresh)."""
    net = build_model(cfg.model)
    finetune = cfg.train.finetune
    if weights is not None and start is None:
        skipped = load_weights(net, weights, finetune.weights)
        log.line(f"fine-tuning from {finetune.weights}; fresh head: {skipped or 'none'}")
    if start is not None:
        try:
            net.load_state_dict(start[1]["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{start[0]}: does not fit {cfg.model.name} ({str(e).splitlines()[0]}); "
                                  "set checkpoint.resume=none or another run_dir") from None
    freeze_stages(net, finetune.freeze_stages)  # before the optimizer: frozen params are left out
    return net


@dataclass
class Run:
    """A training run, built (build_run): what fit trains and finish summarizes."""

    cfg: Config  # resolved, with a fine-tuning file's stored architecture
    info: DistInfo
    log: MetricsLog
    device_name: str
    train_loader: Loader
    val_loader: Loader
    net: nn.Module  # the plain module: evaluated and checkpointed (parts.model wraps it)
    parts: TrainParts
    progress: Progress  # restored on resume
    position: bytes | None  # this rank's loader position in a mid-epoch checkpoint
    global_batch: int


def build_run(cfg: Config, info: DistInfo) -> Run:
    """Everything a run trains with, built in an order that fails cheaply first: the data (a misfit
    stops before any output), then the run folder and log, the network with its starting weights,
    the optimizer state (restored on resume) and the step's parts. Collective across ranks."""
    cfg, weights = finetune_source(cfg)
    set_determinism(cfg, info.rank)
    train_loader, val_loader = build_loaders(cfg, info)  # data first: a misfit stops before any output
    teacher = build_teacher(cfg)
    log, device_name = start_log(cfg, info)
    start = find_start(cfg, info)
    net = build_net(cfg, start, weights, log)
    gflop = flops_per_image(net, cfg.data.image_size).flops / 1e9
    dev = info.device
    net.to(dev, memory_format=memory_format(cfg))

    global_batch = cfg.data.batch_size * info.world
    finetune = cfg.train.finetune
    peak = peak_lr(cfg.optim, global_batch, finetune.lr_scale if finetune.weights else 1.0)
    optimizer = build_optimizer(net, cfg.optim, peak, fused=dev.type == "cuda")
    precision = Precision(cfg.train.amp, dev)
    if precision.amp != cfg.train.amp:
        log.line(f"train.amp auto -> {precision.amp}" + ("" if precision.amp == "bf16" else
                 " (this device has no native bf16: autocast would run reference kernels, slower than fp32)"))
    ema = EMA(net, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    progress, position = Progress(), None
    if start is not None:
        progress = ckpt.restore(start[1], optimizer, precision, ema, info)
        position = ckpt.loader_position(start[1], info)
        log.line(f"resumed from {start[0]}: epoch {progress.epoch}, step {progress.step_in_epoch} of it, "
                 f"global step {progress.global_step}")

    model: nn.Module = net
    if info.world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None, gradient_as_bucket_view=True)
    distiller = build_distiller(teacher, cfg, dev, log)
    model = compiled(model, cfg.train.compile)  # one static graph per image size
    steps = len(train_loader)  # per epoch
    total_steps = cfg.train.epochs * steps
    parts = TrainParts(model, optimizer, precision, nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                       ema, cfg.optim, total_steps, round(cfg.optim.warmup_epochs * steps), peak, cfg.data.seed,
                       distiller)
    log.line(f"device {dev} x {info.world} ranks; global batch {global_batch} -> peak lr {peak:.4g} "
             f"(base_lr {cfg.optim.base_lr} per 256); {steps} steps/epoch, {total_steps} total; "
             f"{steps * train_loader.batch_size * info.world} train / "
             f"{val_loader.split.num_samples} val images; {gflop:.2f} GFLOP/img forward")
    return Run(cfg, info, log, device_name, train_loader, val_loader, net, parts, progress, position, global_batch)


def fit(r: Run, stop: StopFlag) -> None:
    """Train from `r.progress` to the last epoch to run, or until a stop is agreed. Each epoch is
    trained, evaluated when due (a whole epoch only), logged and checkpointed; so is a stop."""
    cfg, info, progress, log = r.cfg, r.info, r.progress, r.log
    profiler = Profiler(cfg.profile, cfg.run_dir, info.device, info.rank)
    kill = fault.kill_hook(cfg.run_dir, info.rank, info.world)  # None unless a test sets it
    position = r.position
    while progress.epoch < epochs_to_run(cfg.train):
        epoch = progress.epoch
        result = train_epoch(r.parts, r.train_loader, epoch, progress.step_in_epoch, progress.global_step,
                             cfg.train.log_every, info, log, stop, profiler, kill, position)
        position = result.position
        done = progress.step_in_epoch + result.steps_done == len(r.train_loader)
        record = epoch_record(epoch, result, done, r.train_loader.size_at(epoch))
        if continues(progress.history, epoch):  # the rest of an epoch a stop cut short
            record = merged(progress.history.pop(), record)
        log.line(format_epoch(record))
        is_best, selected = False, progress.best["weights"]
        if done and eval_due(epoch, cfg.train):
            record.update(evaluate_all(r.net, r.parts.ema, r.val_loader, epoch, r.parts.precision, info, log))
            selected, is_best = record["selected"], record["select_top1"] > progress.best["top1"]
            if is_best:
                progress.best = {"top1": record["select_top1"], "top5": record["select_top5"], "epoch": epoch,
                                 "weights": selected}
        log.record("epoch" if done else "stopped", result.global_step, record)  # one "epoch" line per epoch
        progress.history.append(record)
        progress.global_step = result.global_step
        progress.step_in_epoch = 0 if done else progress.step_in_epoch + result.steps_done
        progress.epoch = epoch + 1 if done else epoch
        save(r, selected, position, is_best)
        if result.stopped or distributed.any_rank(stop.requested, info):
            log.line(f"stop requested: checkpointed at epoch {progress.epoch} step {progress.step_in_epoch}; exiting")
            break
    profiler.close()


def eval_due(epoch: int, train_cfg: TrainConfig) -> bool:
    """Whether a completed `epoch` is evaluated: every train.eval_every epochs, and always the last."""
    return (epoch + 1) % train_cfg.eval_every == 0 or epoch + 1 == train_cfg.epochs


def save(r: Run, selected: str, position: bytes | None, is_best: bool) -> None:
    """Checkpoint `r.progress` (rank 0 writes; every rank takes part in the gather), then wait
    for every rank."""
    p = r.parts
    state = ckpt.checkpoint_state(r.progress, r.net, p.optimizer, p.precision, p.ema, r.cfg, selected, r.info,
                                  position)
    if r.info.is_main:
        path = ckpt.save_checkpoint(state, r.cfg.run_dir, r.cfg.checkpoint.keep_last, is_best)
        r.log.line(f"checkpoint {path}")
    distributed.barrier(r.info)


def finish(r: Run, wall_s: float) -> None:
    """Write the run's summary (rank 0) and close the log."""
    summary = summarize(r.progress.history, r.progress.best, epochs_done=r.progress.epoch,
                        epochs_planned=r.cfg.train.epochs)
    summary.update(wall_s=wall_s, global_batch=r.global_batch, peak_lr=r.parts.peak_lr, world_size=r.info.world,
                   device=r.device_name, teacher=r.cfg.distill.teacher or None)
    if r.info.is_main:
        write_summary(Path(r.cfg.run_dir), summary)
        r.log.line(format_summary(summary))
    r.log.close()


def run(cfg: Config, info: DistInfo) -> int:
    """Train `cfg` on this rank: build, fit, summarize. Returns 0 (done, or stopped cleanly);
    errors raise (main turns them into one line and an exit code)."""
    t_start = time.perf_counter()
    with StopFlag().installed() as stop:  # before building: a signal then stops after the first step
        r = build_run(cfg, info)
        fit(r, stop)
        finish(r, time.perf_counter() - t_start)
    return 0


def error_line(e: Exception) -> str:
    """The one line a fatal error is reported with (pipeline.fatal's, but a config error's own)."""
    return str(e) if isinstance(e, ConfigError) else fatal.error_line(e)  # "config: ..." as it is


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="recipe YAML (configs/*.yaml); defaults if omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.base_lr=0.1")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if cfg.train.deterministic:  # cuBLAS needs this before its first use to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    info = distributed.setup()
    code = 0
    try:
        code = run(cfg, info)
    except (ConfigError, CheckpointError, *fatal.INPUT_ERRORS) as e:
        print(error_line(e), file=sys.stderr)
        code = fatal.exit_code(e)
        if info.world > 1:
            distributed.exit_now(code)  # the other ranks may be inside a collective: do not wait
    finally:
        if code == 0 or info.world == 1:
            distributed.cleanup()
    return code
