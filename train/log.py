"""Run records on rank 0: provenance header, one line + one JSON line per log interval,
TensorBoard scalars when tensorboard is installed, and the end-of-run summary."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.verdict import loop_verdict

WAIT_EDGES_MS = (0.1, 1.0, 5.0, 20.0, 100.0)  # data-wait histogram buckets: <0.1 ms, ..., >=100 ms

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """HEAD's hash of the firehose checkout, with '+dirty' for uncommitted changes; 'unknown'
    outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def provenance(device: torch.device, world: int) -> dict:
    """What produced this run: code version, library versions, hardware."""
    try:
        import nvidia.dali as dali

        dali_version = dali.__version__
    except ImportError:
        dali_version = "not installed"
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "dali": dali_version,
        "cuda": torch.version.cuda or "none",
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device": device_name,
        "world_size": world,
        "host": platform.node(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory allocated by tensors (CUDA), else the process's peak RSS, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class MetricsLog:
    """Rank 0's sink: prints lines (via `write`, which tqdm can replace), appends JSON lines to
    RUN_DIR/metrics.jsonl, and mirrors numbers to TensorBoard if `torch.utils.tensorboard`
    imports. Other ranks get a MetricsLog with enabled=False that drops everything."""

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


def format_step(epoch: int, step: int, steps: int, m: dict) -> str:
    """One log line for a train interval (see engine.train_epoch for the keys)."""
    return (f"epoch {epoch} step {step}/{steps} lr {m['lr']:.4g} loss {m['loss']:.4f} "
            f"{m['img_per_s']:.0f} img/s (global) data {m['data_ms']:.1f} ms + compute "
            f"{m['compute_ms']:.1f} ms per step, peak mem {m['peak_mem_mb']:.0f} MiB")


def format_eval(epoch: int, m: dict) -> str:
    return (f"eval epoch {epoch}: top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% over {m['count']} "
            f"images (split has {m['expected']})" + ("" if m["count"] == m["expected"] else "  COUNT MISMATCH"))


def wait_histogram(history: list[dict]) -> dict[str, int]:
    """Rank 0's steps per data-wait bucket over all epochs, labelled in ms ("<0.1", "0.1-1", ..., ">=100")."""
    edges = [f"{e:g}" for e in WAIT_EDGES_MS]
    labels = [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]
    counts = [sum(c) for c in zip(*(h["data_wait_hist"] for h in history if "data_wait_hist" in h))]
    return dict(zip(labels, counts or [0] * len(labels)))


def summarize(history: list[dict], best: list, epochs_done: int, epochs_planned: int) -> dict:
    """The run's numbers from its per-epoch records (including epochs run before a resume)."""
    evaluated = [h for h in history if "top1" in h]
    train_s = [h["train_s"] for h in history]
    # Weighted by epoch time: the share of all train-loop time spent blocked on data.
    data_wait = sum(h["data_wait_fraction"] * t for h, t in zip(history, train_s)) / max(sum(train_s), 1e-9)
    return {
        "epochs": epochs_done, "epochs_planned": epochs_planned, "finished": epochs_done >= epochs_planned,
        "final_top1": evaluated[-1]["top1"] if evaluated else float("nan"),
        "final_top5": evaluated[-1]["top5"] if evaluated else float("nan"),
        "best_top1": best[0], "best_top5": best[1], "best_epoch": best[2],  # EMA's when EMA is on
        "img_per_s_per_epoch": [h["img_per_s"] for h in history],
        "mean_img_per_s": sum(h["img_per_s"] for h in history) / max(len(history), 1),
        "data_wait_fraction": data_wait,
        "train_s": sum(train_s), "eval_s": sum(h.get("eval_s", 0.0) for h in history),
        "data_wait_hist": wait_histogram(history),
        "bottleneck": loop_verdict(data_wait),
    }


def write_summary(run_dir: Path, summary: dict) -> str:
    """Write RUN_DIR/summary.json and return the printed summary text."""
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    wall = summary["wall_s"]
    lines = [
        f"summary: {summary['epochs']} epochs in {wall:.0f} s "
        f"({summary['train_s']:.0f} s training, {summary['eval_s']:.0f} s evaluation)",
        f"  final top-1 {summary['final_top1']:.2f}% top-5 {summary['final_top5']:.2f}%; "
        f"best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']})",
        f"  throughput {summary['mean_img_per_s']:.0f} img/s global (mean over epochs, warm-up steps excluded)",
        f"  time in the train loop: {100 * summary['data_wait_fraction']:.1f}% waiting for data, "
        f"{100 * (1 - summary['data_wait_fraction']):.1f}% compute: {loop_verdict(summary['data_wait_fraction'])}",
        "  data wait per step (ms: steps): " + ", ".join(f"{k}: {v}" for k, v in summary["data_wait_hist"].items()),
    ]
    return "\n".join(lines)


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
