"""Where the input bottleneck is, in words, from measured figures (a pure function: testable).

Compute ceiling = model-only img/s. A pipeline stage slower than that ceiling limits training; the
earliest such stage (read -> decode -> augment) is the one to fix first. If every stage alone is
faster than the model but end-to-end is not, the limit is the hand-off or the contention between
the pipeline and training for the same cores (host-to-device).
"""

from __future__ import annotations

EFFICIENT = 0.95  # end-to-end at >= 95% of model-only: the input keeps up
ADVICE = {
    "read": "read faster: local NVMe or page cache, fewer larger shards, more reader threads",
    "decode": "decode faster: raise data.hw_decoder_load (GPU), more DALI threads (data.num_threads), "
              "or reshard with --max-side (e.g. 500) for a cheaper decode",
    "augment": "augment on the GPU (DALI mixed), drop auto-augment, or more DALI threads",
    "host-to-device": "overlap better: larger data.prefetch, DALI on the GPU instead of CPU workers, "
                      "fewer CPU threads competing with the training process",
}
# Each stage's figure: what the pipeline reaches when it does work up to and including that stage.
STAGE_KEYS = (("read", "read"), ("decode", "decode"), ("augment", "train"))


def verdict(model_img_s: float, stages: dict[str, float], end_to_end_img_s: float) -> dict:
    """`stages` maps the pipeline-bench stage names ("read", "decode", "train") to img/s.

    Returns {"bound", "limit", "efficiency", "shortfall", "advice"}: `bound` is "compute-bound" or
    "input-bound: <stage>", `shortfall` how many times faster the limiting stage must get.
    """
    efficiency = end_to_end_img_s / model_img_s if model_img_s else 0.0
    if efficiency >= EFFICIENT:
        return {"bound": "compute-bound", "limit": "compute", "efficiency": efficiency, "shortfall": 1.0,
                "advice": "the input keeps up; speed up the model (torch.compile, larger batch, bf16)"}
    for name, key in STAGE_KEYS:
        if key in stages and stages[key] < model_img_s * EFFICIENT:
            return {"bound": f"input-bound: {name}", "limit": name, "efficiency": efficiency,
                    "shortfall": model_img_s / stages[key], "advice": ADVICE[name]}
    return {"bound": "input-bound: host-to-device", "limit": "host-to-device", "efficiency": efficiency,
            "shortfall": model_img_s / max(end_to_end_img_s, 1e-9), "advice": ADVICE["host-to-device"]}


def mfu(flops_per_img: float, img_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: training FLOPs (3x forward: forward + two backward matmuls) per
    image x images/s over the device's peak FLOP/s."""
    return 3 * flops_per_img * img_per_s / peak_flops if peak_flops else 0.0


def loop_verdict(data_wait_fraction: float) -> str:
    """The trainer's own verdict from its share of loop time blocked on data, in the suite's words
    (the trainer cannot time the stages apart: the suite names which one)."""
    if data_wait_fraction <= 1 - EFFICIENT:
        return "compute-bound"
    return (f"input-bound ({data_wait_fraction:.0%} of the loop waiting for data; "
            "`python -m benchmarks` names the stage)")
