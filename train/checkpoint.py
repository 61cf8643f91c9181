"""Checkpoints: what one holds (`Progress`, `checkpoint_state`, `restore`), and atomic files that
load with `torch.load(weights_only=True)` only (pipeline/pt_file.py).

A checkpoint is a dict of tensors and plain Python values (the config as a dict, RNG states as
tensors and lists), so the restricted unpickler can read it and a file that would run code on
load is refused. Files are `RUN_DIR/ckpt-e{epoch:04d}-s{step:08d}.pt`, written atomically
(pipeline/atomic.py: a crash leaves either the old file or the complete new one, never a partial
one). A failed write (disk full, read-only folder) leaves no temporary file and raises
CheckpointError.
"""

from __future__ import annotations

import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.atomic import atomic_file, fsync_dir, stale_temps, temp_path
from pipeline.pt_file import CheckpointError, safe_load
from train import distributed
from train.amp import Precision
from train.config import Config, to_dict
from train.distributed import DistInfo
from train.optim import EMA

FORMAT = 1
NAME = re.compile(r"^ckpt-e(\d{4,})-s(\d{8,})\.pt$")
BEST = "best.pt"
REQUIRED = ("format", "model", "optimizer", "epoch", "step_in_epoch", "global_step", "config", "rng")


def checkpoint_name(epoch: int, global_step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{global_step:08d}.pt"


def rng_state(device: torch.device) -> dict:
    """Torch CPU, Python and NumPy RNG states, and `device`'s own CUDA RNG (no other GPU is touched,
    so no context is created on it), as tensors and lists (weights_only-safe)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None,
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(state: dict, device: torch.device, cuda_state: torch.Tensor | None = None) -> None:
    """Inverse of rng_state; `cuda_state` (this rank's own, when the checkpoint holds one per
    rank) goes to `device` only."""
    torch.set_rng_state(state["torch"])
    if cuda_state is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(cuda_state, device)
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


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
    rng = rng_state(info.device)
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
    set_rng_state(state["rng"], info.device, cuda[info.rank] if cuda and len(cuda) == info.world else None)
    return Progress(state["epoch"], state["step_in_epoch"], state["global_step"],
                    saved_best(state.get("best")), list(state.get("history", [])))


def saved_best(best) -> dict:
    """A checkpoint's best record; checkpoints before `selected_weights` saved [top1, top5, epoch]."""
    if isinstance(best, list | tuple):
        return {**Progress().best, **dict(zip(("top1", "top5", "epoch"), best))}
    return dict(best or Progress().best)


def loader_position(state: dict, info: DistInfo) -> bytes | None:
    """This rank's saved loader position in a mid-epoch checkpoint, or None (an end-of-epoch
    checkpoint, or one written by another number of ranks: the loader then skips batches)."""
    positions = state.get("loader_positions")
    return positions[info.rank] if positions and len(positions) == info.world else None


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save `obj` to `path` atomically (pipeline/atomic.py). CheckpointError naming `path`
    when it cannot be written; no temporary file is left."""
    try:
        with atomic_file(path) as f:
            torch.save(obj, f)
    except OSError as e:  # ENOSPC, EROFS, EIO...
        raise CheckpointError(f"{path}: cannot write checkpoint ({e.strerror or e})") from None


def save_checkpoint(state: dict, run_dir: str | Path, keep_last: int, is_best: bool) -> Path:
    """Write `state` (see REQUIRED) as the checkpoint for its (epoch, global_step); keep the
    newest `keep_last` checkpoints; point best.pt at it when `is_best`. Returns its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / checkpoint_name(state["epoch"], state["global_step"])
    atomic_save({"format": FORMAT, **state}, path)
    if is_best:
        # A hard link shares the bytes; replace it atomically like any other write.
        tmp = temp_path(run_dir / BEST)
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
            os.replace(tmp, run_dir / BEST)
            fsync_dir(run_dir)
        except OSError:
            tmp.unlink(missing_ok=True)
            atomic_save({"format": FORMAT, **state}, run_dir / BEST)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files in `run_dir`, oldest first by (epoch, global_step); best.pt excluded."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(NAME.match(p.name), p) for p in run_dir.iterdir()]
    return [p for _, p in sorted(((int(m[1]), int(m[2])), p) for m, p in found if m)]


def load_checkpoint(path: str | Path) -> dict:
    """A firehose checkpoint (safe_load); CheckpointError on anything wrong."""
    state = safe_load(path, "checkpoint")
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise CheckpointError(f"{path}: not a firehose checkpoint (missing keys)")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']}, expected {FORMAT}")
    return state


def find_resume(run_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in `run_dir` that loads, as (path, state), or None.

    Corrupt or partial files (never ours: we write atomically, so a torn copy or a bad disk) are
    skipped with a warning on stderr and renamed to `*.pt.corrupt`, so later pruning and resumes
    do not count them. Temporary files of a killed write are deleted (they are never read). Call
    from one process only (rank 0), before this run writes any checkpoint.
    """
    for tmp in stale_temps(run_dir, "*.pt"):
        print(f"warning: removing {tmp} (left by a checkpoint write that was killed)", file=sys.stderr, flush=True)
        tmp.unlink(missing_ok=True)
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            print(f"warning: skipping checkpoint: {e}", file=sys.stderr, flush=True)
            path.rename(path.with_name(path.name + ".corrupt"))
    return None
