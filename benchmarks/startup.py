"""Start-up and epoch-boundary costs of the training loader: the time to the first batch from
process start, each epoch boundary's stall, and memory over epochs. No model.

    python -m benchmarks.startup --data DIR [--device cpu|gpu] [--loader dali] [--image-size PX]
        [--batch-size N] [--epochs E] [--threads N] [--rank R --world W] --json OUT

`first_batch_s` counts from the PROCESS START (the kernel's start time of this process, read from
/proc/self/stat), so it includes the interpreter, every import (torch, DALI), starting CUDA,
reading the manifest, the shard pre-flight, building the pipeline and filling the shuffle buffer.
`phases_s` splits it: interpreter (to this module's first line), imports, cuda_start (on a GPU
only: the CUDA context and a first allocation, synchronized), build_loader (manifest, pre-flight,
...) and first_batch (the first epoch's pipeline build and first batch). Per batch only a
timestamp is taken; on a GPU the device is synchronized at the first and last batch of each epoch
only. `turnover_s[e]` is the gap between the last batch of epoch e and the first of e+1, less the
median batch interval: the stall an epoch boundary adds. `rss_mb[e]` is the resident memory at
epoch e's end; `gpu_memory` is torch's peak and the driver's count of used device memory after the
last epoch (benchmarks.common.gpu_memory; None on the CPU).
"""

from __future__ import annotations

import os
import time


def process_start_perf() -> float:
    """This process's start as a time.perf_counter() value (s), from /proc/self/stat's start time
    (clock ticks since boot; 10 ms resolution) and /proc/uptime. Where /proc is missing, now."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # after the command name, which may hold spaces
        with open("/proc/uptime") as f:
            uptime_s = float(f.read().split()[0])
        age_s = uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of the whole line
    except (OSError, ValueError, IndexError):
        age_s = 0.0
    return time.perf_counter() - max(age_s, 0.0)


T_START = process_start_perf()
T_MODULE = time.perf_counter()  # before the heavy imports

import argparse  # noqa: E402  (timed: the imports below are part of the start-up being measured)
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import gpu_memory, one_line_errors  # noqa: E402
from benchmarks.timing import resolve_device  # noqa: E402
from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.config import DataConfig  # noqa: E402
from pipeline.loader import build_loader  # noqa: E402
from pipeline.throughput import sync  # noqa: E402
from train.provenance import provenance  # noqa: E402


def rss_mb() -> float:
    """Resident memory of this process (MiB), from /proc/self/status VmRSS; ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def drive(loader, epochs: int, device: torch.device) -> dict:
    """Run `epochs` full epochs of `loader`, touching nothing but a timestamp per batch.

    Returns perf_counter timestamps: `start` (before epoch 0 is asked for), `first`/`last` (first and
    last batch of each epoch), `intervals` (s between consecutive batches inside epochs), `images`
    per epoch, and `rss_mb` at each epoch end."""
    n = len(loader)
    out = {"first": [], "last": [], "intervals": [], "images": [], "rss_mb": []}
    out["start"] = time.perf_counter()
    for e in range(epochs):
        images, prev = 0, None
        for i, (x, labels) in enumerate(loader.epoch(e)):
            images += len(labels)
            del x, labels  # hold nothing: the loader's memory is what is measured
            if i == 0 or i == n - 1:
                sync(device)
            now = time.perf_counter()
            if i == 0:
                out["first"].append(now)
            elif prev is not None:
                out["intervals"].append(now - prev)
            prev = now
        out["last"].append(prev)
        out["images"].append(images)
        out["rss_mb"].append(rss_mb())
    return out


def start_cuda(device: torch.device) -> None:
    """Create the CUDA context now, with a first allocation (torch does it lazily: it would land
    in build_loader or the first batch)."""
    torch.cuda.init()
    torch.empty(1, device=device)
    sync(device)


def figures(t: dict, marks: dict[str, float]) -> dict:
    """The JSON figures (seconds, img/s, MiB) from drive()'s timestamps; `marks` maps each phase
    between this module's first line and drive()'s start to its end time, in order."""
    median = statistics.median(t["intervals"]) if t["intervals"] else 0.0
    ends = [t["start"], *t["last"]]
    epoch_s = [b - a for a, b in zip(ends, ends[1:])]  # epoch 0 includes its pipeline build
    return {
        "first_batch_s": t["first"][0] - T_START,
        "epoch_s": epoch_s,
        "turnover_s": [f - last - median for last, f in zip(t["last"], t["first"][1:])],
        "median_batch_interval_s": median,
        "img_per_s": sum(t["images"]) / sum(epoch_s),
        "img_per_s_per_epoch": [n / s for n, s in zip(t["images"], epoch_s)],
        "rss_mb": t["rss_mb"],
        "phases_s": {**phases(marks), "first_batch": t["first"][0] - t["start"]},
    }


def phases(marks: dict[str, float]) -> dict[str, float]:
    """{"interpreter": s, then each phase of `marks`: s}, each from the end of the one before."""
    ends = {"interpreter": T_MODULE, **marks}
    starts = [T_START, *ends.values()]
    return {name: end - start for (name, end), start in zip(ends.items(), starts)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="shard folder (_info.json + shards)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    p.add_argument("--loader", default="dali", choices=("dali", "baseline"))
    p.add_argument("--image-size", type=int, default=224, help="train crop side, px")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="DALI threads = baseline workers")
    p.add_argument("--rank", type=int, default=0, help="read this rank's share of a --world-rank job")
    p.add_argument("--world", type=int, default=1, help="ranks of the job (one process plays --rank; a loader "
                   "needs only its rank and the world size)")
    p.add_argument("--json", required=True, help="write the figures here")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if not 0 <= args.rank < args.world:
        p.error(f"--rank must be in [0, --world), got {args.rank} of {args.world}")
    return args


@one_line_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = DataConfig(path=args.data, loader=args.loader, batch_size=args.batch_size, image_size=args.image_size,
                     num_threads=args.threads, workers=args.threads)
    if args.loader == "dali":
        import nvidia.dali  # noqa: F401  (counted with the imports, not with build_loader)
    marks = {"imports": time.perf_counter()}
    device = resolve_device(args.device)
    if device.type == "cuda":
        start_cuda(device)
        marks["cuda_start"] = time.perf_counter()
    loader = build_loader(cfg, "train", args.rank, args.world, device)
    marks["build_loader"] = time.perf_counter()
    t = drive(loader, args.epochs, device)
    r = {**figures(t, marks), "samples": loader.num_samples, "batches_per_epoch": len(loader),
         "images_per_epoch": t["images"], "shards": len(loader.split.files),
         "rank_shards": len(loader.rank_files(0)), "gpu_memory": gpu_memory(device), "args": vars(args),
         "provenance": provenance(device)}
    atomic_write(args.json, (json.dumps(r, indent=1) + "\n").encode())
    turn = ", ".join(f"{x:.3f}" for x in r["turnover_s"]) or "-"
    share = f" (rank {args.rank} of {args.world})" if args.world > 1 else ""
    used = r["gpu_memory"]["device_used_mb"]
    gpu = f"; GPU {used:.0f} MiB used (the driver's count)" if used is not None else ""
    print(f"{args.loader} on {device}{share}: first batch {r['first_batch_s']:.2f} s after process start "
          f"({', '.join(f'{k} {v:.2f}' for k, v in r['phases_s'].items())}); epochs "
          f"{', '.join(f'{s:.1f}' for s in r['epoch_s'])} s; turnover {turn} s; {r['img_per_s']:.0f} img/s; "
          f"RSS {', '.join(f'{m:.0f}' for m in r['rss_mb'])} MiB{gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
