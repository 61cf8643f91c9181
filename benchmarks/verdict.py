"""Where the input bottleneck is, in words, from measured figures (a pure function: testable).

Compute ceiling = model-only img/s. A pipeline stage slower than that ceiling limits training; the
earliest such stage (read -> decode -> augment) is the one to fix first. If every stage alone is
faster than the model but end to end is not, the pipeline and training slow each other down when
they run together: contention for the same CPU cores (CPU pipeline) or for the GPU (mixed decode
and augmentation share the SMs with training), or a hand-off that does not overlap.
"""

from __future__ import annotations

from train.summary import EFFICIENT

ADVICE = {
    "read": "read faster: local NVMe or page cache, fewer larger shards, more reader threads",
    "decode": "decode faster: raise data.hw_decoder_load (GPU), more DALI threads (data.num_threads), "
              "or reshard with --max-side (e.g. 500) for a cheaper decode",
    "augment": "augment on the GPU (DALI mixed), drop auto-augment, or more DALI threads",
}
CONTENTION = {
    "cpu": "the pipeline's threads and the model's share the same cores: try fewer DALI threads "
           "(data.num_threads) or fewer model threads (OMP_NUM_THREADS), or move decoding to a GPU",
    "cuda": "the pipeline's GPU work competes with training for the SMs, or its CPU threads starve the "
            "training process: sweep data.hw_decoder_load and data.num_threads end to end, raise data.prefetch",
}
# Each stage's figure: what the pipeline reaches when it does work up to and including that stage.
STAGE_KEYS = (("read", "read"), ("decode", "decode"), ("augment", "train"))


def verdict(model_img_s: float, stages: dict[str, float], end_to_end_img_s: float, device: str = "cpu") -> dict:
    """`stages` maps the pipeline-bench stage names ("read", "decode", "train") to img/s; `device`
    is "cpu" or "cuda" (where the pipeline and the model ran).

    Returns {"bound", "limit", "efficiency", "shortfall", "advice"}: `bound` is "compute-bound" or
    "input-bound: <stage>" (or "input-bound: contention"), `shortfall` how many times faster the
    limiting stage must get.
    """
    efficiency = end_to_end_img_s / model_img_s if model_img_s else 0.0
    if efficiency >= EFFICIENT:
        return {"bound": "compute-bound", "limit": "compute", "efficiency": efficiency, "shortfall": 1.0,
                "advice": "the input keeps up; speed up the model (torch.compile, larger batch, bf16)"}
    if not stages:  # no stage alone was measured: the limit cannot be named
        return {"bound": "input-bound (stages not measured)", "limit": "unknown", "efficiency": efficiency,
                "shortfall": model_img_s / max(end_to_end_img_s, 1e-9),
                "advice": "measure each stage alone (--stages read,decode,train) to find the one that limits"}
    for name, key in STAGE_KEYS:
        if key in stages and stages[key] < model_img_s * EFFICIENT:
            return {"bound": f"input-bound: {name}", "limit": name, "efficiency": efficiency,
                    "shortfall": model_img_s / stages[key], "advice": ADVICE[name]}
    return {"bound": "input-bound: contention", "limit": "contention", "efficiency": efficiency,
            "shortfall": model_img_s / max(end_to_end_img_s, 1e-9), "advice": CONTENTION[device]}


def mfu(flops_per_img: float, img_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: training FLOPs (3x forward: forward + two backward matmuls) per
    image x images/s over the device's peak FLOP/s."""
    return 3 * flops_per_img * img_per_s / peak_flops if peak_flops else 0.0
