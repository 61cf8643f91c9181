"""The benchmark suite: model only, pipeline only and end to end, side by side in one process.

    python -m benchmarks --data OUT [--device cpu|gpu] [--model resnet50] [--batch-size N]
        [--image-size 224] [--steps N] [--json FILE] [--plot FILE.png]

Model only = training steps on one synthetic batch already on the device (the compute ceiling).
Pipeline only = each loader alone (read, decode, full augmentation). End to end = real training
steps fed by each loader. Warm-up (and compile) outside the timed region; median of repeats;
img/s is global (one process here). Then the verdict: input efficiency, the limiting stage, MFU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from benchmarks.common import add_data_args, data_config, num_classes, write_json
from benchmarks.pipeline_bench import measure
from benchmarks.timing import endless, resolve_device
from benchmarks.verdict import mfu, verdict
from model import ModelConfig, build_model, flops_per_image
from pipeline.loader import build_loader
from train.amp import Precision, resolve_amp
from train.backend import configure_backends, rate, sync
from train.config import OptimConfig
from train.distill import Distiller
from train.engine import StepParts, train_step
from train.optim import build_optimizer
from train.profile import Profiler
from train.provenance import cpu_name

# Dense bf16 tensor-core peaks (FLOP/s) from NVIDIA's data sheets; CPUs are measured instead.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def measured_peak(device: torch.device, amp: str) -> float:
    """FLOP/s of a square matmul in the training dtype (what autocast runs the convs in), median of
    3. The side doubles from 256 until one matmul takes 50 ms (8192 at most on a GPU, 2048 on a CPU),
    so a CPU without native bf16 (a slow reference kernel) is measured in seconds, not minutes."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_amp(amp, device), torch.float32)
    n, largest = 256, 8192 if device.type == "cuda" else 2048

    def seconds(a: torch.Tensor, reps: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ a
        sync(device)
        return time.perf_counter() - t0

    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        seconds(a, 1)  # warm-up
        if n >= largest or seconds(a, 1) > 0.05:
            break
        n *= 2
    return statistics.median(3 * 2 * n**3 / seconds(a, 3) for _ in range(3))


def peak_flops(device: torch.device, given_tflops: float | None, amp: str) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from)."""
    if given_tflops:
        return given_tflops * 1e12, "given (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16.items():
            if key in name:
                return value, f"{key} bf16 dense data-sheet peak"
    return measured_peak(device, amp), f"measured {amp} matmul peak on this device"


def step_parts(args, device: torch.device, num_classes: int) -> StepParts:
    """A model + optimizer ready for timed training steps (what the trainer builds, minus DDP)."""
    net = build_model(ModelConfig(name=args.model, num_classes=num_classes))
    net = net.to(device, memory_format=torch.channels_last)
    model = torch.compile(net, dynamic=False) if args.compile else net
    optim_cfg = OptimConfig()
    distiller = None
    if args.teacher:  # a distillation step: the teacher's forward is part of every step (random weights: speed)
        teacher = build_model(ModelConfig(name=args.teacher, num_classes=num_classes))
        distiller = Distiller(teacher.to(device, memory_format=torch.channels_last), alpha=0.5, temperature=4.0)
    return StepParts(model, build_optimizer(net, optim_cfg, 0.1, fused=device.type == "cuda"),
                     Precision(args.amp, device), nn.CrossEntropyLoss(label_smoothing=0.1), None, optim_cfg,
                     total_steps=10**9, warmup_steps=0, peak_lr=0.1, mix_seed=0, distiller=distiller)


def train_rate(parts: StepParts, batches, args, device: torch.device) -> dict:
    """Timed training steps over `batches`: img/s median of repeats, after warm-up."""
    step, off = [0], Profiler(False, "", device, 0)

    def stepped():
        for images, labels in batches:
            train_step(parts, images, labels, step[0], off)
            step[0] += 1
            yield labels

    return rate(stepped(), len, device, args.warmup, args.steps, args.repeats)


def run(args) -> dict:
    device = resolve_device(args.device)
    configure_backends(deterministic=False)  # the trainer's settings: cudnn.benchmark, TF32
    classes = num_classes(args)
    parts = step_parts(args, device, classes)
    syn = build_loader(data_config(args, "synthetic"), "train", 0, 1, device, classes)  # one batch, on the device
    print(f"model only ({args.model}, batch {args.batch_size}, {args.image_size} px, {args.amp}) ...", flush=True)
    result = {"args": vars(args), "model_only": train_rate(parts, endless(syn.epoch), args, device),
              "pipeline_only": {}, "end_to_end": {}}
    for name in args.loaders.split(","):
        result["pipeline_only"][name] = measure(name, args, device, classes)
        loader = build_loader(data_config(args, name), "train", 0, 1, device, classes)
        print(f"end to end ({name}) ...", flush=True)
        result["end_to_end"][name] = train_rate(parts, endless(loader.epoch), args, device)
    model_s = result["model_only"]["per_s"]
    first = args.loaders.split(",")[0]
    stages = {k: v["img_per_s"] for k, v in result["pipeline_only"][first].items()}
    result["verdict"] = {"loader": first, **verdict(model_s, stages, result["end_to_end"][first]["per_s"],
                                                    device.type)}
    peak, source = peak_flops(device, args.peak_tflops, args.amp)
    flops = flops_per_image(build_model(ModelConfig(name=args.model)), args.image_size).flops
    result["mfu"] = {"peak_flops": peak, "peak_source": source, "flops_per_img_forward": flops,
                     "model_only": mfu(flops, model_s, peak),
                     **{f"end_to_end_{k}": mfu(flops, v["per_s"], peak) for k, v in result["end_to_end"].items()}}
    return result


def table(r: dict) -> str:
    """The printed summary: every figure in img/s, then the verdict."""
    rows = [("model only (synthetic batch on device)", r["model_only"]["per_s"])]
    for name, stages in r["pipeline_only"].items():
        rows += [(f"pipeline {name}: {stage}", s["img_per_s"]) for stage, s in stages.items()]
    rows += [(f"end to end {name}", e["per_s"]) for name, e in r["end_to_end"].items()]
    width = max(len(n) for n, _ in rows)
    lines = [f"{n:<{width}}  {v:10.1f} img/s" for n, v in rows]
    v, m = r["verdict"], r["mfu"]
    lines += [f"input efficiency ({v['loader']}): {v['efficiency']:.2f} (end to end / model only)",
              f"verdict: {v['bound']}" + (f" ({v['shortfall']:.1f}x short)" if v["limit"] != "compute" else ""),
              f"try: {v['advice']}",
              f"MFU: model only {m['model_only']:.1%}, " + ", ".join(
                  f"{k.removeprefix('end_to_end_')} {x:.1%}" for k, x in m.items() if k.startswith("end_to_end_")) +
              f" of {m['peak_flops'] / 1e12:.1f} TFLOP/s ({m['peak_source']})"]
    return "\n".join(lines)


def plot(r: dict, path: str) -> None:
    """A horizontal bar chart of every img/s figure (needs matplotlib: the `plot` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("model only", r["model_only"]["per_s"], "tab:gray")]
    for name, stages in r["pipeline_only"].items():
        rows += [(f"{name} {stage}", s["img_per_s"], "tab:blue" if name == "dali" else "tab:orange")
                 for stage, s in stages.items()]
    rows += [(f"end to end {n}", e["per_s"], "tab:green") for n, e in r["end_to_end"].items()]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    ax.barh([n for n, _, _ in rows][::-1], [v for _, v, _ in rows][::-1], color=[c for _, _, c in rows][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("images / second (log scale)")
    device = resolve_device(r["args"]["device"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    ax.set_title(f"{r['args']['model']} {r['args']['image_size']} px, batch {r['args']['batch_size']} on "
                 f"{where}: {r['verdict']['bound']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p, batch_size=256)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--teacher", help="time distillation steps from this teacher architecture (e.g. resnet50)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="auto: bf16 where the device has it natively, else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile is warm-up)")
    p.add_argument("--loaders", default="dali,baseline", help="the first one gets the verdict")
    p.add_argument("--stages", default="read,decode,train", help="pipeline-only stages")
    p.add_argument("--split", default="train")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: data sheet or measured)")
    p.add_argument("--plot")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    r = run(args)
    print(table(r))
    write_json(args.json, r, resolve_device(args.device))
    if args.plot:
        plot(r, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
