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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import build_model, flops_per_image, freeze_stages, load_torchvision_state_dict, stored_model_config
from pipeline.atomic import atomic_write
from pipeline.base import PipelineError
from pipeline.loader import build_loader
from pipeline.shards import ShardError
from train import checkpoint as ckpt
from train import distributed, fault
from train.amp import Precision
from train.backend import compiled, configure_backends
from train.config import Config, ConfigError, load_config, to_dict, to_yaml
from train.distill import Distiller, load_teacher
from train.distributed import DistInfo
from train.engine import StepParts, StopFlag, train_epoch
from train.evaluate import evaluate
from train.metrics_log import MetricsLog
from train.optim import EMA, build_optimizer, peak_lr
from train.profile import Profiler
from train.provenance import provenance
from train.report import format_eval, format_summary
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


def load_weights(net: nn.Module, path: str) -> list[str]:
    """Fine-tuning start: a torchvision-format state dict (or a firehose checkpoint's "model")."""
    state = ckpt.safe_load(path, "weights file (train.finetune.weights)")
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        return load_torchvision_state_dict(net, state)
    except (KeyError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"{path}: weights do not fit {type(net).__name__}: {e}") from None


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint, restored on resume."""

    epoch: int = 0  # epochs completed: the epoch to run next
    step_in_epoch: int = 0  # steps of `epoch` already run (after a mid-epoch stop)
    global_step: int = 0  # optimizer steps so far: drives the lr schedule
    # best.pt: its top-1/top-5 (%), epoch, and which weights scored them ("model" or "ema")
    best: dict = field(default_factory=lambda: {"top1": -1.0, "top5": -1.0, "epoch": -1, "weights": "model"})
    history: list[dict] = field(default_factory=list)  # one record per epoch run


def checkpoint_state(progress: Progress, net: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision,
                     ema: EMA | None, cfg: Config, selected: str, info: DistInfo, position: bytes | None) -> dict:
    """Everything a resume needs, as tensors and plain values (loads with weights_only=True).
    `selected_weights` names the weights this checkpoint's evaluation found better ("model" or
    "ema"): what deploy exports. Collective: every rank's own GPU RNG state and, mid-epoch, its
    loader position are gathered."""
    rng = ckpt.rng_state(info.device)
    if rng["cuda"] is not None:
        rng["cuda"] = [s.cpu() for s in distributed.all_gather(rng["cuda"].to(info.device), info)]
    positions = distributed.all_gather_object(position, info) if progress.step_in_epoch else None
    return {
        "model": net.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None, "selected_weights": selected,
        "epoch": progress.epoch, "step_in_epoch": progress.step_in_epoch, "global_step": progress.global_step,
        "best": progress.best, "history": progress.history, "config": to_dict(cfg), "rng": rng,
        "loader_positions": positions,
    }


def restore(state: dict, optimizer: torch.optim.Optimizer, precision: Precision, ema: EMA | None,
            info: DistInfo) -> Progress:
    """Load a checkpoint's optimizer, scaler, EMA and RNG states (the model is loaded before it
    moves to its device); return its Progress."""
    optimizer.load_state_dict(state["optimizer"])
    if precision.scaler is not None and state.get("scaler"):
        precision.scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    cuda = state["rng"].get("cuda")
    ckpt.set_rng_state(state["rng"], info.device, cuda[info.rank] if cuda and len(cuda) == info.world else None)
    return Progress(state["epoch"], state["step_in_epoch"], state["global_step"],
                    saved_best(state.get("best")), list(state.get("history", [])))


def saved_best(best) -> dict:
    """A checkpoint's best record; checkpoints before `selected_weights` saved [top1, top5, epoch]."""
    if isinstance(best, list | tuple):
        return {**Progress().best, **dict(zip(("top1", "top5", "epoch"), best))}
    return dict(best or Progress().best)


def evaluate_all(net: nn.Module, ema: EMA | None, val_loader, epoch: int, precision: Precision, info: DistInfo,
                 log: MetricsLog) -> dict:
    """Exact validation of the model and of its EMA (one validation pipeline, reused): the epoch
    record's eval fields. "selected" names the better of the two, whose top-1/5 best.pt is chosen by."""
    t0 = time.perf_counter()
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


def build_loaders(cfg: Config, info: DistInfo):
    """(train, val) loaders; a batch or rank count that does not fit the shards is a ConfigError."""
    args = (info.rank, info.world, info.device, cfg.model.num_classes, info.local_world)
    try:
        train = build_loader(cfg.data, "train", *args)
        val = build_loader(cfg.data, "val", *args)
    except ShardError:
        raise
    except ValueError as e:  # no full batch per rank, more ranks than samples
        raise ConfigError(f"config: {e}") from None
    classes = train.split.classes
    if classes and len(classes) != cfg.model.num_classes:
        raise ConfigError(f"config: 'model.num_classes' is {cfg.model.num_classes} but {cfg.data.path} "
                          f"has {len(classes)}")
    train.set_image_size(lambda epoch: image_size_at(epoch, cfg.train.resize, cfg.data.image_size))
    train.epochs = min(cfg.train.epochs, cfg.train.stop_after_epoch or cfg.train.epochs)
    return train, val


def build_net(cfg: Config, start: tuple[str, dict] | None, log: MetricsLog) -> nn.Module:
    """The model with its starting weights (a checkpoint's, fine-tuning weights', or fresh)."""
    net = build_model(cfg.model)
    finetune = cfg.train.finetune
    if finetune.weights and start is None:
        skipped = load_weights(net, finetune.weights)
        log.line(f"fine-tuning from {finetune.weights}; fresh head: {skipped or 'none'}")
    if start is not None:
        try:
            net.load_state_dict(start[1]["model"])
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"{start[0]}: does not fit {cfg.model.name} ({str(e).splitlines()[0]}); "
                                       "set checkpoint.resume=none or another run_dir") from None
    freeze_stages(net, finetune.freeze_stages)  # before the optimizer: frozen params are left out
    return net


def run(cfg: Config, info: DistInfo) -> int:
    t_start = time.perf_counter()
    if cfg.train.finetune.weights:  # a pruned file (deploy.prune) carries its conv widths: build that net
        try:
            cfg = dataclasses.replace(cfg, model=stored_model_config(cfg.train.finetune.weights, cfg.model))
        except ValueError as e:
            raise ckpt.CheckpointError(str(e)) from None
    set_determinism(cfg, info.rank)
    run_dir, dev, main = Path(cfg.run_dir), info.device, info.is_main
    train_loader, val_loader = build_loaders(cfg, info)  # data first: a misfit stops before any output
    teacher = None
    if cfg.distill.teacher:
        with torch.random.fork_rng(devices=[]):  # its throwaway init must not move the student's
            teacher = load_teacher(cfg.distill, cfg.model.num_classes, cfg.model.in_channels)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", to_yaml(cfg).encode())
    log = MetricsLog(run_dir, main)
    prov = provenance(dev, info.world)
    log.line("provenance: " + " ".join(f"{k}={v}" for k, v in prov.items()))
    log.line("config:\n" + to_yaml(cfg).rstrip())
    log.record("provenance", 0, {**prov, "config": to_dict(cfg)})

    start = find_start(cfg, info)
    net = build_net(cfg, start, log)
    gflop = flops_per_image(net, cfg.data.image_size).flops / 1e9
    net.to(dev, memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)

    global_batch = cfg.data.batch_size * info.world
    finetune = cfg.train.finetune
    peak = peak_lr(cfg.optim, global_batch, finetune.lr_scale if finetune.weights else 1.0)
    optimizer = build_optimizer(net, cfg.optim, peak, fused=dev.type == "cuda")
    precision = Precision(cfg.train.amp, dev)
    if precision.amp != cfg.train.amp:
        log.line(f"train.amp auto -> {precision.amp}" + ("" if precision.amp == "bf16" else
                 " (this device has no native bf16: autocast would run reference kernels, slower than fp32)"))
    ema = EMA(net, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    progress = Progress()
    if start is not None:
        progress = restore(start[1], optimizer, precision, ema, info)
        log.line(f"resumed from {start[0]}: epoch {progress.epoch}, step {progress.step_in_epoch} of it, "
                 f"global step {progress.global_step}")

    model: nn.Module = net
    if info.world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None, gradient_as_bucket_view=True)
    distiller = None
    if teacher is not None:
        teacher_gflop = flops_per_image(teacher, cfg.data.image_size).flops / 1e9
        teacher.to(dev, memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)
        log.line(f"distilling from {cfg.distill.teacher} ({cfg.distill.teacher_model}, {teacher_gflop:.2f} GFLOP/img "
                 f"forward, counted in img/s): alpha {cfg.distill.alpha}, temperature {cfg.distill.temperature}")
        distiller = Distiller(teacher, cfg.distill.alpha, cfg.distill.temperature)
    model = compiled(model, cfg.train.compile)  # one static graph per image size
    if distiller is not None:
        distiller.teacher = compiled(distiller.teacher, cfg.train.compile)
    steps = len(train_loader)  # per epoch
    total_steps = cfg.train.epochs * steps
    parts = StepParts(model, optimizer, precision, nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                      ema, cfg.optim, total_steps, round(cfg.optim.warmup_epochs * steps), peak, cfg.data.seed,
                      distiller)
    log.line(f"device {dev} x {info.world} ranks; global batch {global_batch} -> peak lr {peak:.4g} "
             f"(base_lr {cfg.optim.base_lr} per 256); {steps} steps/epoch, {total_steps} total; "
             f"{steps * train_loader.batch_size * info.world} train / "
             f"{val_loader.split.num_samples} val images; {gflop:.2f} GFLOP/img forward")

    stop = StopFlag().install()
    profiler = Profiler(cfg.profile, run_dir, dev, info.rank)
    kill = fault.kill_hook(run_dir, info.rank, info.world)  # None unless a test sets it
    positions = start[1].get("loader_positions") if start is not None else None
    position = positions[info.rank] if positions and len(positions) == info.world else None
    while progress.epoch < train_loader.epochs:  # train.epochs, or stop_after_epoch if sooner
        epoch = progress.epoch
        result = train_epoch(parts, train_loader, epoch, progress.step_in_epoch, progress.global_step,
                             cfg.train.log_every, info, log, stop, profiler, kill, position)
        position = result.position
        done = progress.step_in_epoch + result.steps_done == steps
        record = {"epoch": epoch, "loss": result.loss, "img_per_s": result.img_per_s, "steps": result.steps_done,
                  "partial": not done, "data_wait_fraction": result.data_wait_fraction, "train_s": result.train_s,
                  "data_wait_hist": result.wait_hist, "image_size": train_loader.size_at(epoch)}
        log.line(f"epoch {epoch} trained in {result.train_s:.1f} s: loss {result.loss:.4f}, "
                 f"{result.img_per_s:.0f} img/s global, {100 * result.data_wait_fraction:.1f}% of the time "
                 "waiting for data")
        is_best, selected = False, progress.best["weights"]
        if done and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs):
            record.update(evaluate_all(net, ema, val_loader, epoch, precision, info, log))
            selected = record["selected"]
            is_best = record["select_top1"] > progress.best["top1"]
            if is_best:
                progress.best = {"top1": record["select_top1"], "top5": record["select_top5"], "epoch": epoch,
                                 "weights": selected}
        log.record("epoch", result.global_step, record)
        progress.history.append(record)
        progress.global_step = result.global_step
        progress.epoch, progress.step_in_epoch = (epoch + 1, 0) if done else (epoch, progress.step_in_epoch
                                                                              + result.steps_done)
        state = checkpoint_state(progress, net, optimizer, precision, ema, cfg, selected, info, position)
        if main:
            log.line(f"checkpoint {ckpt.save_checkpoint(state, run_dir, cfg.checkpoint.keep_last, is_best)}")
        distributed.barrier(info)
        if result.stopped or distributed.any_rank(stop.requested, info):
            log.line(f"stop requested: checkpointed at epoch {progress.epoch} step {progress.step_in_epoch}; exiting")
            break
    profiler.close()

    summary = summarize(progress.history, progress.best, epochs_done=progress.epoch,
                        epochs_planned=cfg.train.epochs)
    summary.update(wall_s=time.perf_counter() - t_start, global_batch=global_batch, peak_lr=peak,
                   world_size=info.world, device=prov["device"], teacher=cfg.distill.teacher or None)
    if main:
        write_summary(run_dir, summary)
        log.line(format_summary(summary))
    log.close()
    return 0


def error_line(e: Exception) -> str:
    """The one line a fatal error is reported with."""
    if isinstance(e, ConfigError):
        return str(e)  # already starts with "config:"
    if isinstance(e, OSError) and e.filename:  # disk full, read-only run_dir: name the file
        return f"error: {e.filename}: {e.strerror}"
    return f"error: {e}"


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
    except (ConfigError, ckpt.CheckpointError, ShardError, OSError, PipelineError) as e:
        print(error_line(e), file=sys.stderr)
        code = 1 if isinstance(e, PipelineError) else 2
        if info.world > 1:
            distributed.exit_now(code)  # the other ranks may be inside a collective: do not wait
    finally:
        if code == 0 or info.world == 1:
            distributed.cleanup()
    return code
