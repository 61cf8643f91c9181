"""The trainer's printed lines: one per log interval, one per epoch, one per evaluation, and the
run summary."""

from __future__ import annotations

from train.summary import loop_verdict


def format_step(epoch: int, step: int, steps: int, m: dict) -> str:
    """One log line for a train interval (see engine.StepMeter.interval for the keys)."""
    return (f"epoch {epoch} step {step}/{steps} lr {m['lr']:.4g} loss {m['loss']:.4f} "
            f"{m['img_per_s']:.0f} img/s (global) data {m['data_ms']:.1f} ms + compute "
            f"{m['compute_ms']:.1f} ms per step, peak mem {m['peak_mem_mb']:.0f} MiB")


def format_epoch(record: dict) -> str:
    """One epoch's training figures (the trainer's epoch record): wall time, loss, global img/s and
    the share of the time spent waiting for data; and how often it was resumed, if it was."""
    resumed = record.get("resumed", 0)
    return (f"epoch {record['epoch']} trained in {record['train_s']:.1f} s: loss {record['loss']:.4f}, "
            f"{record['img_per_s']:.0f} img/s global, {100 * record['data_wait_fraction']:.1f}% of the time "
            "waiting for data" + (f" ({record['steps']} steps, resumed {resumed}x)" if resumed else ""))


def format_eval(epoch: int, m: dict, weights: str) -> str:
    """One evaluation of `weights` ("model" or "EMA")."""
    return (f"eval epoch {epoch} ({weights}): top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% over {m['count']} "
            f"images (split has {m['expected']})" + ("" if m["count"] == m["expected"] else "  COUNT MISMATCH"))


def format_summary(s: dict) -> str:
    """The end-of-run summary; every accuracy names the weights it belongs to."""
    ema = f", EMA {s['final_ema_top1']:.2f}%" if s.get("final_ema_top1") is not None else ""
    return "\n".join([
        f"summary: {s['epochs']} epochs in {s['wall_s']:.0f} s "
        f"({s['train_s']:.0f} s training, {s['eval_s']:.0f} s evaluation)",
        f"  final top-1: model {s['final_top1']:.2f}%{ema}; best top-1 {s['best_top1']:.2f}% "
        f"({s['best_weights']} weights, epoch {s['best_epoch']}: best.pt)",
        f"  throughput {s['mean_img_per_s']:.0f} img/s global (mean over steps, warm-up steps excluded)",
        f"  time in the train loop: {100 * s['data_wait_fraction']:.1f}% waiting for data, "
        f"{100 * (1 - s['data_wait_fraction']):.1f}% compute: {loop_verdict(s['data_wait_fraction'])}",
        "  data wait per step (ms: steps): " + ", ".join(f"{k}: {v}" for k, v in s["data_wait_hist"].items()),
    ])
