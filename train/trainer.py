"""`python -m train --config X.yaml [key=value ...]`: build everything, run the epochs, record.

Exit codes: 0 done (or stopped cleanly by SIGTERM/SIGINT/stop_after_epoch, with a checkpoint),
2 bad config, data that does not fit it, unusable checkpoint/weights (one line on stderr, before
any training), or a bad shard met while training or a checkpoint that cannot be written (one line
on stderr naming the file).
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
from pipeline.loader import build_loader
from pipeline.shards import ShardError
from train import checkpoint as ckpt
from train import distributed, fault
from train.amp import Precision
from train.config import Config, ConfigError, load_config, to_dict, to_yaml
from train.distributed import DistInfo
from train.engine import StepParts, StopFlag, train_epoch
from train.evaluate import evaluate
from train.log import MetricsLog, format_eval, provenance, summarize, write_summary
from train.optim import EMA, build_optimizer, peak_lr
from train.profile import Profiler


def image_size_at(epoch: int, resize: list[list[int]], default: int) -> int:
    """Train crop side (px) for `epoch`: the last [start_epoch, size] with start_epoch <= epoch."""
    size = default
    for start, px in resize:
        if start <= epoch:
            size = px
    return size


def set_determinism(cfg: Config) -> None:
    """Seed every RNG; deterministic kernels (bit-exact resume) or the fastest ones."""
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.backends.cudnn.benchmark = not cfg.train.deterministic
    # warn_only: CUDA has no deterministic AdaptiveAvgPool2d backward; bit-exactness is a CPU promise.
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = True  # only fp32 matmuls outside autocast; cudnn convs
    torch.backends.cudnn.allow_tf32 = True  # already allow TF32


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ckpt.CheckpointError(f"{path}: cannot load weights with weights_only=True "
                                   f"({ckpt.first_line(e)})") from None
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
    best: list = field(default_factory=lambda: [-1.0, -1.0, -1])  # top-1 %, top-5 %, epoch
    history: list[dict] = field(default_factory=list)  # one record per epoch run


def checkpoint_state(p: Progress, net: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision,
                     ema: EMA | None, cfg: Config) -> dict:
    """Everything a resume needs, as tensors and plain values (loads with weights_only=True)."""
    return {
        "model": net.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": p.epoch, "step_in_epoch": p.step_in_epoch, "global_step": p.global_step,
        "best": p.best, "history": p.history, "config": to_dict(cfg), "rng": ckpt.rng_state(),
    }


def restore(state: dict, optimizer: torch.optim.Optimizer, precision: Precision, ema: EMA | None) -> Progress:
    """Load a checkpoint's optimizer, scaler, EMA and RNG states (the model is loaded before it
    moves to its device); return its Progress."""
    optimizer.load_state_dict(state["optimizer"])
    if precision.scaler is not None and state.get("scaler"):
        precision.scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    ckpt.set_rng_state(state["rng"])
    return Progress(state["epoch"], state["step_in_epoch"], state["global_step"],
                    list(state.get("best", Progress().best)), list(state.get("history", [])))


def evaluate_all(net: nn.Module, ema: EMA | None, val_loader, epoch: int, precision: Precision, info: DistInfo,
                 log: MetricsLog) -> dict:
    """Exact validation of the model (and its EMA): the epoch record's eval fields. "select_top1/5"
    are the numbers best.pt is chosen by: the EMA's when there is one (that is what ships)."""
    t0 = time.perf_counter()
    m = evaluate(net, val_loader, epoch, precision, info)
    log.line(format_eval(epoch, m))
    out = {"top1": m["top1"], "top5": m["top5"], "val_count": m["count"], "val_expected": m["expected"],
           "select_top1": m["top1"], "select_top5": m["top5"]}
    if ema is not None:
        e = evaluate(ema.module, val_loader, epoch, precision, info)
        log.line("EMA " + format_eval(epoch, e))
        out.update(ema_top1=e["top1"], ema_top5=e["top5"], select_top1=e["top1"], select_top5=e["top5"])
    out["eval_s"] = time.perf_counter() - t0
    return out


def run(cfg: Config, info: DistInfo) -> int:
    t_start = time.perf_counter()
    if cfg.train.finetune.weights:  # a pruned file (deploy.prune) carries its conv widths: build that net
        try:
            cfg = dataclasses.replace(cfg, model=stored_model_config(cfg.train.finetune.weights, cfg.model))
        except ValueError as e:
            raise ckpt.CheckpointError(str(e)) from None
    set_determinism(cfg)
    run_dir, dev, main = Path(cfg.run_dir), info.device, info.is_main
    # Data first: a batch or rank count that does not fit the shards stops before any output.
    n_cls = cfg.model.num_classes
    try:
        train_loader = build_loader(cfg.data, "train", info.rank, info.world, dev, n_cls)
        val_loader = build_loader(cfg.data, "val", info.rank, info.world, dev, n_cls)
    except ShardError:
        raise
    except ValueError as e:  # pipeline.loader: no full batch per rank, more ranks than samples
        raise ConfigError(f"config: {e}") from None
    classes = train_loader.split.classes
    if classes and len(classes) != n_cls:
        raise ConfigError(f"config: 'model.num_classes' is {n_cls} but {cfg.data.path} has {len(classes)}")

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    log = MetricsLog(run_dir, main)
    prov = provenance(dev, info.world)
    log.line("provenance: " + " ".join(f"{k}={v}" for k, v in prov.items()))
    log.line("config:\n" + to_yaml(cfg).rstrip())
    log.record("provenance", 0, {**prov, "config": to_dict(cfg)})

    start = find_start(cfg, info)
    net = build_model(cfg.model)
    ft = cfg.train.finetune
    if ft.weights and start is None:
        skipped = load_weights(net, ft.weights)
        log.line(f"fine-tuning from {ft.weights}; fresh head: {skipped or 'none'}")
    if start is not None:
        try:
            net.load_state_dict(start[1]["model"])
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"{start[0]}: does not fit {cfg.model.name} ({str(e).splitlines()[0]}); "
                                       "set checkpoint.resume=none or another run_dir") from None
    freeze_stages(net, ft.freeze_stages)  # before the optimizer: frozen params are left out
    gflop = flops_per_image(net, cfg.data.image_size).flops / 1e9
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    net.to(dev, memory_format=fmt)

    global_batch = cfg.data.batch_size * info.world
    peak = peak_lr(cfg.optim, global_batch, ft.lr_scale if ft.weights else 1.0)
    optimizer = build_optimizer(net, cfg.optim, peak, fused=dev.type == "cuda")
    precision = Precision(cfg.train.amp, dev)
    ema = EMA(net, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    p = Progress()
    if start is not None:
        p = restore(start[1], optimizer, precision, ema)
        log.line(f"resumed from {start[0]}: epoch {p.epoch}, step {p.step_in_epoch} of it, "
                 f"global step {p.global_step}")

    model: nn.Module = net
    if info.world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None, gradient_as_bucket_view=True)
    if cfg.train.compile:
        model = torch.compile(model, dynamic=False)  # one static graph per image size
    steps = len(train_loader)  # per epoch
    total_steps = cfg.train.epochs * steps
    parts = StepParts(model, optimizer, precision, nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                      ema, cfg.optim, total_steps, round(cfg.optim.warmup_epochs * steps), peak,
                      cfg.data.seed)
    log.line(f"device {dev} x {info.world} ranks; global batch {global_batch} -> peak lr {peak:.4g} "
             f"(base_lr {cfg.optim.base_lr} per 256); {steps} steps/epoch, {total_steps} total; "
             f"{len(train_loader) * train_loader.batch_size * info.world} train / "
             f"{val_loader.split.num_samples} val images; {gflop:.2f} GFLOP/img forward")

    stop = StopFlag().install()
    profiler = Profiler(cfg.profile, run_dir, dev, info.rank)
    kill = fault.kill_hook(run_dir, info.rank, info.world)  # None unless a test sets it
    while p.epoch < min(cfg.train.epochs, cfg.train.stop_after_epoch or cfg.train.epochs):
        train_loader.set_image_size(image_size_at(p.epoch, cfg.train.resize, cfg.data.image_size))
        r = train_epoch(parts, train_loader, p.epoch, p.step_in_epoch, p.global_step, cfg.train.log_every,
                        info, log, stop, profiler, kill)
        done = p.step_in_epoch + r.steps_done == steps
        record = {"epoch": p.epoch, "loss": r.loss, "img_per_s": r.img_per_s, "partial": not done,
                  "data_wait_fraction": r.data_wait_fraction, "train_s": r.train_s, "data_wait_hist": r.wait_hist,
                  "image_size": train_loader.image_size}
        log.line(f"epoch {p.epoch} trained in {r.train_s:.1f} s: loss {r.loss:.4f}, {r.img_per_s:.0f} img/s "
                 f"global, {100 * r.data_wait_fraction:.1f}% of the time waiting for data")
        is_best = False
        if done and ((p.epoch + 1) % cfg.train.eval_every == 0 or p.epoch + 1 == cfg.train.epochs):
            record.update(evaluate_all(net, ema, val_loader, p.epoch, precision, info, log))
            is_best = record["select_top1"] > p.best[0]
            if is_best:
                p.best = [record["select_top1"], record["select_top5"], p.epoch]
        log.record("epoch", r.global_step, record)
        p.history.append(record)
        p.global_step = r.global_step
        p.epoch, p.step_in_epoch = (p.epoch + 1, 0) if done else (p.epoch, p.step_in_epoch + r.steps_done)
        if main:
            state = checkpoint_state(p, net, optimizer, precision, ema, cfg)
            log.line(f"checkpoint {ckpt.save_checkpoint(state, run_dir, cfg.checkpoint.keep_last, is_best)}")
        distributed.barrier(info)
        if r.stopped or distributed.any_rank(stop.requested, info):
            log.line(f"stop requested: checkpointed at epoch {p.epoch} step {p.step_in_epoch}; exiting")
            break
    profiler.close()

    summary = summarize(p.history, p.best, epochs_done=p.epoch, epochs_planned=cfg.train.epochs)
    summary.update(wall_s=time.perf_counter() - t_start, global_batch=global_batch, peak_lr=peak,
                   world_size=info.world, device=prov["device"])
    if main:
        log.line(write_summary(run_dir, summary))
    log.close()
    return 0


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
    try:
        return run(cfg, info)
    except (ConfigError, ckpt.CheckpointError, ShardError, OSError) as e:
        if isinstance(e, ConfigError):
            msg = str(e)  # already starts with "config:"
        elif isinstance(e, OSError) and e.filename:  # disk full, read-only run_dir: name the file
            msg = f"error: {e.filename}: {e.strerror}"
        else:
            msg = f"error: {e}"
        print(msg, file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
