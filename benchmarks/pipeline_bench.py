"""Input pipeline throughput, per stage and per loader, side by side on the same shards and cores,
per second and per CPU-second, at one or more thread counts.

    python -m benchmarks.pipeline_bench --data OUT [--split train] [--loaders dali,baseline,plain]
        [--stages read,decode,train] [--threads 1,2] [--output uint8|float16]
        [--device cpu|gpu] [--batch-size 128] [--image-size 224] [--num-classes N]
        [--warmup N] [--steps N] [--repeats R] [--json FILE]

Loaders: `dali` and `baseline` (the production loaders, pipeline/), `plain` (webdataset's
documented recipe, benchmarks/plain.py: the loader a user would otherwise write). Stages
(benchmarks/stages.py): `read` (shard bytes only: samples/s and MB/s), `decode` (the decode each
loader's training starts with: DALI's random-crop decode, a full PIL decode for the others),
`train` (the whole train augmentation, handed over as the trainer receives it). Each loader's
hand-off and resize filter are recorded beside its figures (a comparison holds at equal ones).

`--threads N,M`: DALI threads = baseline and plain worker processes = N, then M; `scaling` is each
figure over its value at the first count. Torch runs on one thread in the benchmark process while a
loader is measured (DataLoader workers always do). Median of repeats after warm-up; each repeat
lies inside one epoch, after that epoch's first batches (pipeline.throughput.rate), with no work
for the next epoch inside it (DALI's build-ahead is off here: benchmarks.startup measures the
epoch turnover), and is 50 batches on a GPU by default. `img_per_cpu_s`: images per CPU-second of
this process (DALI's threads) and all its live descendants (the workers), over the same windows
(benchmarks/cpu_time.py). Each stage's `gpu_memory` holds torch's peak while it ran and the
driver's count of used device memory at its end (benchmarks.common.gpu_memory; None on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
from collections.abc import Iterator

import torch

from benchmarks.common import (
    add_data_args,
    gpu_memory,
    num_classes,
    one_line_errors,
    timed_loader,
    window_steps,
    write_json,
)
from benchmarks.cpu_time import tree_cpu_s
from benchmarks.stages import STAGE_BUILDERS, STAGES, describe
from benchmarks.timing import resolve_device
from pipeline.base import Loader
from pipeline.throughput import rate

LOADERS = tuple(STAGE_BUILDERS)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` threads inside the block (so the process's CPU time is the loader's own work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(loader_name: str, args, device: torch.device, classes: int, threads: int,
            loader: Loader | None = None) -> dict:
    """Every stage of one loader (`loader`, or one built here with `threads` threads) -> {stage:
    figures}: img/s and img per CPU-second (medians, and each repeat's), the CPU cores busy on
    average, GPU memory; MB/s of the read stage; the shape and dtype the train stage hands over.
    A loader built here does not build its next epoch ahead (the steady state: no boundary work
    inside a window); a loader given (the suite's, which also trains) is measured as it is."""
    if loader is None:
        loader = timed_loader(args, loader_name, args.split, device, classes, threads)
        loader.build_ahead = False
    out = {}
    with torch_threads(1):
        for stage in filter(None, args.stages.split(",")):
            gpu_memory(device)  # this stage's peak starts here
            batches, count, nbytes = STAGE_BUILDERS[loader_name](loader, stage)
            # Windows inside the loader's epochs (DALI's read/decode: one pipeline, its reader wraps about there).
            r = rate(batches, count, device, args.warmup, window_steps(args, device), args.repeats, len(loader),
                     cpu_clock=tree_cpu_s)
            per_cpu = r["per_cpu_s"]
            entry = {"img_per_s": r["per_s"], "img_per_cpu_s": per_cpu,
                     "cpu_cores_busy": r["per_s"] / per_cpu if per_cpu else None,
                     "repeats_img_per_s": r["repeats"], "repeats_img_per_cpu_s": r["repeats_per_cpu_s"],
                     "gpu_memory": gpu_memory(device)}
            if nbytes:
                sample = next(batches)
                entry["mb_per_s"] = r["per_s"] * nbytes(sample) / count(sample) / 1e6
            if stage == "train":
                images, labels = next(batches)
                entry.update(batch_shape=list(images.shape), dtype=str(images.dtype).removeprefix("torch."),
                             memory_format="channels_last" if images.is_contiguous(memory_format=torch.channels_last)
                             else "contiguous", labels_dtype=str(labels.dtype).removeprefix("torch."))
            out[stage] = entry
            del batches
            gc.collect()  # the stage's own workers and pipeline end here, before the next stage is timed
            print(f"{loader_name:9s} {stage:7s} {threads:2d} thr {r['per_s']:9.1f} img/s" +
                  (f" {per_cpu:9.1f} img/CPU-s" if per_cpu else "") +
                  (f"  {entry['mb_per_s']:7.1f} MB/s" if "mb_per_s" in entry else ""), flush=True)
    return out


def scaling(by_threads: dict[str, dict]) -> dict:
    """{threads: {stage: img/s there / img/s at the first thread count}} of one loader's figures."""
    first = next(iter(by_threads.values()))
    return {n: {stage: v["img_per_s"] / first[stage]["img_per_s"] for stage, v in stages.items() if stage in first}
            for n, stages in by_threads.items()}


def ratios(loaders: dict[str, dict]) -> dict:
    """The first loader's figures over each other loader's, per thread count and stage:
    {"dali/plain": {threads: {stage: {"img_per_s": x, "img_per_cpu_s": y}}}}."""
    (first, mine), *others = loaders.items()
    out = {}
    for name, theirs in others:
        pair = out[f"{first}/{name}"] = {}
        for n, stages in mine["threads"].items():
            pair[n] = {}
            for stage, a in stages.items():
                b = theirs["threads"][n].get(stage)
                if b:
                    pair[n][stage] = {k: a[k] / b[k] if a[k] and b[k] else None for k in ("img_per_s", "img_per_cpu_s")}
    return out


def table(result: dict) -> str:
    """The compact summary: loader, stage, threads, hand-off, img/s, img per CPU-second, cores busy,
    scaling; then each loader's hand-off and resize in words."""
    head = f"{'loader':9s} {'stage':7s} {'threads':>7s} {'hand-off':8s} {'img/s':>9s} {'img/CPU-s':>9s} " \
           f"{'cores':>5s} {'scaling':>7s}"
    lines = [head]
    for name, r in result["loaders"].items():
        for n, stages in r["threads"].items():
            for stage, v in stages.items():
                per_cpu, busy = v["img_per_cpu_s"], v["cpu_cores_busy"]
                lines.append(f"{name:9s} {stage:7s} {n:>7s} {r['hand_off_dtype']:8s} {v['img_per_s']:9.1f} "
                             f"{per_cpu or float('nan'):9.1f} {busy or float('nan'):5.2f} "
                             f"{r['scaling'][n][stage]:6.2f}x")
    for name, r in result["loaders"].items():
        lines.append(f"{name}: hands over {r['hand_off']}; resize: {r['resize']}")
    for pair, by_n in result["ratios"].items():
        for n, stages in by_n.items():
            if "train" in stages:
                t = stages["train"]
                lines.append(f"{pair} train at {n} threads: {t['img_per_s'] or float('nan'):.2f}x img/s, "
                             f"{t['img_per_cpu_s'] or float('nan'):.2f}x img/CPU-s")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p, batch_size=128)
    p.add_argument("--split", default="train")
    p.add_argument("--loaders", default="dali,baseline,plain", help=f"some of {','.join(LOADERS)}")
    p.add_argument("--stages", default=",".join(STAGES))
    args = p.parse_args(argv)
    unknown = [n for n in args.loaders.split(",") if n not in LOADERS]
    if unknown:
        p.error(f"--loaders: {unknown[0]!r} is not one of {','.join(LOADERS)}")
    return args


@one_line_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    classes = num_classes(args)
    names = args.loaders.split(",")
    runs: dict[str, dict] = {name: {} for name in names}
    for threads in args.threads:  # all loaders at one count, then the next: each ratio measured close in time
        for name in names:
            runs[name][str(threads)] = measure(name, args, device, classes, threads)
    loaders = {name: {**describe(name, args.output), "threads": by_n, "scaling": scaling(by_n)}
               for name, by_n in runs.items()}
    result = {"args": vars(args), "steps": window_steps(args, device), "loaders": loaders, "ratios": ratios(loaders)}
    print(table(result))
    write_json(args.json, result, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
