"""Rank 0's record of a run: printed lines, RUN_DIR/metrics.jsonl, and TensorBoard scalars when
tensorboard is installed. Other ranks hold a disabled log that drops everything."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory allocated by tensors (CUDA), else the process's peak RSS, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class MetricsLog:
    """Prints lines (via `write`, which tqdm can replace), appends JSON lines to RUN_DIR/metrics.jsonl
    and mirrors numbers to TensorBoard if `torch.utils.tensorboard` imports."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.write = print
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # tensorboard not installed: skip quietly
                self.tb = None

    def line(self, text: str) -> None:
        if self.enabled:
            self.write(text)

    def record(self, kind: str, step: int, values: dict) -> None:
        """Append {"kind": kind, "step": step, **values} to metrics.jsonl (and TensorBoard)."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
