"""Atomic checkpoints that load with `torch.load(weights_only=True)` only.

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
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import atomic_file, fsync_dir, stale_temps, temp_path

FORMAT = 1
NAME = re.compile(r"^ckpt-e(\d{4,})-s(\d{8,})\.pt$")
BEST = "best.pt"
REQUIRED = ("format", "model", "optimizer", "epoch", "step_in_epoch", "global_step", "config", "rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, partial, not weights-only, incomplete) or
    cannot be written (disk full, read-only folder). The message names the file."""


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


def first_line(e: Exception) -> str:
    """The first line of an error (torch.load's weights_only errors run to a dozen), <= 200 chars."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def safe_load(path: str | Path, what: str = "file") -> object:
    """torch.load to the CPU with weights_only=True: the one way this project reads a .pt file.
    CheckpointError naming the file when it is missing, unreadable, or a pickle that asks to
    import or call anything (it is never run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what}") from None
    except Exception as e:  # a truncated zip, a bad pickle, a forbidden global...
        raise CheckpointError(f"{path}: unreadable or not weights-only ({first_line(e)})") from None


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
