"""The run's numbers, from its per-epoch records (including epochs run before a resume), and the
loop's verdict: compute-bound or input-bound, in the benchmark suite's words."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.atomic import atomic_write

EFFICIENT = 0.95  # the input keeps up when training runs at >= 95% of its speed without input work
WAIT_EDGES_MS = (0.1, 1.0, 5.0, 20.0, 100.0)  # data-wait histogram buckets: <0.1 ms, ..., >=100 ms


def loop_verdict(data_wait_fraction: float) -> str:
    """The trainer's verdict from its share of loop time blocked on data (it cannot time the stages
    apart: `python -m benchmarks` names which one limits)."""
    if data_wait_fraction <= 1 - EFFICIENT:
        return "compute-bound"
    return (f"input-bound ({data_wait_fraction:.0%} of the loop waiting for data; "
            "`python -m benchmarks` names the stage)")


def wait_histogram(history: list[dict]) -> dict[str, int]:
    """Rank 0's steps per data-wait bucket over all epochs, labelled in ms ("<0.1", "0.1-1", ..., ">=100")."""
    edges = [f"{e:g}" for e in WAIT_EDGES_MS]
    labels = [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]
    counts = [sum(c) for c in zip(*(h["data_wait_hist"] for h in history if "data_wait_hist" in h))]
    return dict(zip(labels, counts or [0] * len(labels)))


def summarize(history: list[dict], best: dict, epochs_done: int, epochs_planned: int) -> dict:
    """The run's summary. `best` is {"top1", "top5", "epoch", "weights"} of best.pt. Throughput is
    weighted by each epoch's steps (a partial epoch counts for what it ran)."""
    evaluated = [h for h in history if "top1" in h]
    train_s = [h["train_s"] for h in history]
    steps = [h.get("steps", 1) for h in history]
    # Weighted by epoch time: the share of all train-loop time spent blocked on data.
    data_wait = sum(h["data_wait_fraction"] * t for h, t in zip(history, train_s)) / max(sum(train_s), 1e-9)
    last = evaluated[-1] if evaluated else {}
    return {
        "epochs": epochs_done, "epochs_planned": epochs_planned, "finished": epochs_done >= epochs_planned,
        "final_top1": last.get("top1", float("nan")), "final_top5": last.get("top5", float("nan")),
        "final_ema_top1": last.get("ema_top1"), "final_ema_top5": last.get("ema_top5"),
        "best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best["epoch"],
        "best_weights": best["weights"],
        "img_per_s_per_epoch": [h["img_per_s"] for h in history],
        "mean_img_per_s": sum(h["img_per_s"] * n for h, n in zip(history, steps)) / max(sum(steps), 1),
        "data_wait_fraction": data_wait,
        "train_s": sum(train_s), "eval_s": sum(h.get("eval_s", 0.0) for h in history),
        "data_wait_hist": wait_histogram(history),
        "bottleneck": loop_verdict(data_wait),
    }


def write_summary(run_dir: Path, summary: dict) -> None:
    """RUN_DIR/summary.json, atomically."""
    atomic_write(Path(run_dir) / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
