"""The benchmark suite: model only, pipeline only and end to end, side by side in one process.

    python -m benchmarks --data OUT [--device cpu|gpu] [--model resnet50] [--batch-size N]
        [--image-size 224] [--steps N] [--loaders dali,baseline[,plain]] [--json FILE] [--plot FILE.png]

Model only = training steps on one synthetic batch already on the device (the compute ceiling).
Pipeline only = each loader alone (read, decode, full augmentation). End to end = real training
steps fed by each loader. Warm-up (and compile) outside the timed region; median of repeats, each
inside one epoch after that epoch's first batches (pipeline.throughput.rate; 50 batches on a GPU by
default); img/s is global (one process here). Each figure carries the GPU memory it used
(benchmarks.common.gpu_memory). Then the verdict: input efficiency, the limiting stage, and MFU
against the peak (the data sheet's on a known GPU) and against the measured matmul peak.
`--loaders ''` times the model alone.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import torch
from torch import nn

from benchmarks.common import (
    add_data_args,
    data_config,
    gpu_memory,
    num_classes,
    one_line_errors,
    one_thread_count,
    timed_loader,
    window_steps,
    write_json,
)
from benchmarks.pipeline_bench import measure
from benchmarks.timing import endless, resolve_device
from benchmarks.verdict import mfu, verdict
from model import ModelConfig, build_model, flops_per_image
from pipeline.base import Loader
from pipeline.loader import build_loader
from pipeline.throughput import rate, sync
from train.amp import DTYPES, Precision, resolve_amp
from train.backend import compiled, configure_backends
from train.config import COMPILE_MODES, OptimConfig
from train.distill import Distiller
from train.engine import TrainParts, train_step
from train.optim import build_optimizer
from train.profile import Profiler
from train.provenance import cpu_name

# Dense bf16 tensor-core peaks (FLOP/s) from NVIDIA's data sheets; CPUs are measured instead.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
GPU_MATMUL_SIDE = 8192  # thousands of output tiles: every SM busy, launch and tail costs negligible
MATMUL_PASS_S = 0.05  # each timed pass of the matmul probe lasts about this long


def measured_peak(device: torch.device, amp: str) -> tuple[float, str]:
    """(FLOP/s, what was measured) of a square matmul of random data in the training dtype (what
    autocast runs the convs in): the median of 5 passes of about 50 ms, the device synchronized at
    each pass's edges. The side is 8192 on a GPU; on a CPU it doubles from 256 until one matmul
    takes 50 ms (2048 at most), so a CPU without native bf16 (slow reference kernels) is measured
    in seconds, not minutes."""
    amp = resolve_amp(amp, device)
    dtype = DTYPES.get(amp, torch.float32)
    side = GPU_MATMUL_SIDE if device.type == "cuda" else 256

    def seconds(a: torch.Tensor, b: torch.Tensor, reps: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        return time.perf_counter() - t0

    while True:
        a, b = (torch.randn(side, side, device=device, dtype=dtype) for _ in range(2))
        seconds(a, b, 1)  # warm-up: kernel choice, caches
        one_s = seconds(a, b, 1)
        if device.type == "cuda" or side >= 2048 or one_s > MATMUL_PASS_S:
            break
        side *= 2
    reps = max(1, round(MATMUL_PASS_S / one_s))
    seconds(a, b, reps)  # a warm-up pass: clocks up
    flops = statistics.median(reps * 2 * side**3 / seconds(a, b, reps) for _ in range(5))
    return flops, f"measured {'fp32' if amp == 'off' else amp} {side}^3 matmul on this device, median of 5"


def peak_flops(device: torch.device, given_tflops: float | None) -> tuple[float, str] | None:
    """(peak FLOP/s, where the figure comes from): --peak-tflops, else a known GPU's data sheet;
    None for a CPU or an unknown GPU (the measured peak stands in)."""
    if given_tflops:
        return given_tflops * 1e12, "given (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16.items():
            if key in name:
                return value, f"{key} bf16 dense data-sheet peak"
    return None


def step_parts(args, device: torch.device, num_classes: int) -> TrainParts:
    """A model + optimizer ready for timed training steps (what the trainer builds, minus DDP)."""
    net = build_model(ModelConfig(name=args.model, num_classes=num_classes))
    net = net.to(device, memory_format=torch.channels_last)
    model = compiled(net, args.compile)
    optim_cfg = OptimConfig()
    distiller = None
    if args.teacher:  # a distillation step: the teacher's forward is part of every step (random weights: speed)
        teacher = build_model(ModelConfig(name=args.teacher, num_classes=num_classes))
        distiller = Distiller(teacher.to(device, memory_format=torch.channels_last), alpha=0.5, temperature=4.0)
    return TrainParts(model, build_optimizer(net, optim_cfg, 0.1, fused=device.type == "cuda"),
                     Precision(args.amp, device), nn.CrossEntropyLoss(label_smoothing=0.1), None, optim_cfg,
                     total_steps=10**9, warmup_steps=0, peak_lr=0.1, mix_seed=0, distiller=distiller)


def train_rate(parts: TrainParts, loader: Loader, epoch_batches: int | None, args, device: torch.device) -> dict:
    """Timed training steps on `loader`'s batches (`epoch_batches` per epoch; None: no epochs to keep
    the windows inside): img/s median of repeats after warm-up, and the GPU memory they used."""
    step, off = [0], Profiler(False, "", device, 0)

    def stepped():
        for images, labels in endless(loader.epoch):
            train_step(parts, images, labels, step[0], off)
            step[0] += 1
            yield labels

    gpu_memory(device)  # the peak starts here
    r = rate(stepped(), len, device, args.warmup, window_steps(args, device), args.repeats, epoch_batches)
    return {**r, "gpu_memory": gpu_memory(device)}


def run(args, save=lambda result: None) -> dict:
    """Every figure; `save(result)` after each section, so a run cut short keeps what it measured."""
    device = resolve_device(args.device)
    configure_backends(deterministic=False)  # the trainer's settings: cudnn.benchmark, TF32
    classes = num_classes(args)
    names = [n for n in args.loaders.split(",") if n]  # none: the model alone
    threads = args.threads[0]
    # Built (and checked to hold a timed window in an epoch) before anything is timed.
    loaders = {name: timed_loader(args, name, "train", device, classes, threads) for name in names}
    parts = step_parts(args, device, classes)
    # one batch, on the device
    syn = build_loader(data_config(args, "synthetic", threads), "train", 0, 1, device, classes)
    print(f"model only ({args.model}, batch {args.batch_size}, {args.image_size} px, {args.amp}) ...", flush=True)
    result = {"args": vars(args), "steps": window_steps(args, device),
              "model_only": train_rate(parts, syn, None, args, device),  # one batch reused: no epochs
              "pipeline_only": {}, "end_to_end": {}}
    save(result)
    for name in names:
        loader = loaders.pop(name)  # dropped after its turn: its workers do not run into the next loader's
        result["pipeline_only"][name] = measure(name, args, device, classes, threads, loader)
        save(result)
        print(f"end to end ({name}) ...", flush=True)
        result["end_to_end"][name] = train_rate(parts, loader, len(loader), args, device)
        save(result)
        del loader
        gc.collect()
    model_s = result["model_only"]["per_s"]
    if names:
        stages = {k: v["img_per_s"] for k, v in result["pipeline_only"][names[0]].items()}
        result["verdict"] = {"loader": names[0], **verdict(model_s, stages, result["end_to_end"][names[0]]["per_s"],
                                                           device.type)}
    measured, measured_source = measured_peak(device, args.amp)
    peak, source = peak_flops(device, args.peak_tflops) or (measured, measured_source)
    flops = flops_per_image(build_model(ModelConfig(name=args.model)), args.image_size).flops
    img_s = {"model_only": model_s, **{f"end_to_end_{k}": v["per_s"] for k, v in result["end_to_end"].items()}}
    result["mfu"] = {"peak_flops": peak, "peak_source": source, "flops_per_img_forward": flops,
                     **{k: mfu(flops, v, peak) for k, v in img_s.items()},
                     "measured_peak_flops": measured, "measured_peak_source": measured_source,
                     "of_measured_peak": {k: mfu(flops, v, measured) for k, v in img_s.items()}}
    return result


def mfu_line(shares: dict, peak: float, source: str) -> str:
    """'model only 41.0%, dali 30.2% of 989 TFLOP/s (source)' from {"model_only": 0.41, "end_to_end_dali": 0.302}."""
    named = ", ".join(f"{k.removeprefix('end_to_end_').replace('_', ' ')} {x:.1%}" for k, x in shares.items())
    return f"{named} of {peak / 1e12:.3g} TFLOP/s ({source})"


def table(r: dict) -> str:
    """The printed summary: every figure in img/s, then the verdict and MFU."""
    rows = [("model only (synthetic batch on device)", r["model_only"]["per_s"])]
    for name, stages in r["pipeline_only"].items():
        rows += [(f"pipeline {name}: {stage}", s["img_per_s"]) for stage, s in stages.items()]
    rows += [(f"end to end {name}", e["per_s"]) for name, e in r["end_to_end"].items()]
    width = max(len(n) for n, _ in rows)
    lines = [f"{n:<{width}}  {v:10.1f} img/s" for n, v in rows]
    if "verdict" in r:
        v = r["verdict"]
        lines += [f"input efficiency ({v['loader']}): {v['efficiency']:.2f} (end to end / model only)",
                  f"verdict: {v['bound']}" + (f" ({v['shortfall']:.1f}x short)" if v["limit"] != "compute" else ""),
                  f"try: {v['advice']}"]
    m = r["mfu"]
    lines.append("MFU: " + mfu_line({k: m[k] for k in m["of_measured_peak"]}, m["peak_flops"], m["peak_source"]))
    if m["peak_source"] != m["measured_peak_source"]:
        lines.append("MFU: " + mfu_line(m["of_measured_peak"], m["measured_peak_flops"], m["measured_peak_source"]))
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
    bound = f": {r['verdict']['bound']}" if "verdict" in r else ""
    a = r["args"]
    ax.set_title(f"{a['model']} {a['image_size']} px, batch {a['batch_size']} on {where}{bound}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p, batch_size=256)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--teacher", help="time distillation steps from this teacher architecture (e.g. resnet50)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="auto: bf16 where the device has it natively, else fp32")
    p.add_argument("--compile", default="none", choices=COMPILE_MODES,
                   help="torch.compile mode of the model (compiling is warm-up)")
    p.add_argument("--loaders", default="dali,baseline",
                   help="some of dali,baseline,plain; the first one gets the verdict")
    p.add_argument("--stages", default="read,decode,train", help="pipeline-only stages")
    p.add_argument("--split", default="train")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: data sheet or measured)")
    p.add_argument("--plot")
    args = p.parse_args(argv)
    one_thread_count(args, p)
    return args


@one_line_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    r = run(args, lambda result: write_json(args.json, result, device))
    print(table(r))
    write_json(args.json, r, device)
    if args.plot:
        plot(r, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
