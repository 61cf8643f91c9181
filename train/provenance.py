"""One provenance record: what produced a figure or a run (code version, libraries, hardware).

Every run log, every benchmark JSON and every RESULTS.md table carries this record, so a number
can be tied to the commit (and whether the tree was dirty) and the machine that produced it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> tuple[str, bool | None]:
    """(HEAD's hash of the firehose checkout, whether tracked files have uncommitted changes);
    ("unknown", None) outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return (head, bool(dirty)) if head else ("unknown", None)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def dali_version() -> str | None:
    """DALI's version: from the module where a loader imported it, else from the metadata of the
    package that `import nvidia.dali` would load (None where it would find none); a run that did
    not use DALI does not import it here."""
    if "nvidia.dali" in sys.modules:
        return getattr(sys.modules["nvidia.dali"], "__version__", None)
    try:
        if importlib.util.find_spec("nvidia.dali") is None:
            return None
    except (ImportError, ValueError):  # no `nvidia` package, or an import blocked on purpose
        return None
    return next((d.version for d in importlib.metadata.distributions()
                 if (d.metadata["Name"] or "").lower().startswith("nvidia-dali")), None)


def provenance(device: torch.device, world: int = 1) -> dict:
    """The record: git commit + dirty flag, library versions, CPU, cores, device, world size, time."""
    commit, dirty = git_commit()
    device = torch.device(device)
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dali": dali_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world,
        "host": platform.node(),
    }
