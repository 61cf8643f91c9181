"""Input pipeline throughput, per stage and per loader, side by side on the same shards and cores.

    python -m benchmarks.pipeline_bench --data OUT [--split train] [--loaders dali,baseline]
        [--stages read,decode,train] [--device cpu|gpu] [--batch-size 128] [--image-size 224]
        [--threads N] [--num-classes N] [--warmup N] [--steps N] [--repeats R] [--json FILE]

Stages (benchmarks/stages.py): `read` (shard bytes only: samples/s and MB/s), `decode` (the decode
each loader's training starts with: DALI's random-crop decode, the baseline's full PIL decode),
`train` (the whole train augmentation, handed over as the trainer receives it). Median of repeats
after warm-up; each repeat lies inside one epoch, after that epoch's first batches
(pipeline.throughput.rate), and is 50 batches on a GPU by default. Each stage's `gpu_memory` holds
torch's peak while it ran and the driver's count of used device memory at its end
(benchmarks.common.gpu_memory; None on the CPU).
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import add_data_args, gpu_memory, num_classes, timed_loader, window_steps, write_json
from benchmarks.stages import STAGE_BUILDERS, STAGES
from benchmarks.timing import resolve_device
from pipeline.base import Loader
from pipeline.throughput import rate


def measure(loader_name: str, args, device: torch.device, classes: int, loader: Loader | None = None) -> dict:
    """Every stage of one loader (`loader`, or one built here) -> {stage: figures}."""
    loader = loader or timed_loader(args, loader_name, args.split, device, classes)
    out = {}
    for stage in filter(None, args.stages.split(",")):
        gpu_memory(device)  # this stage's peak starts here
        batches, count, nbytes = STAGE_BUILDERS[loader_name](loader, stage)
        # Windows inside the loader's epochs (DALI's read/decode stages: one pipeline, its reader wraps about there).
        r = rate(batches, count, device, args.warmup, window_steps(args, device), args.repeats, len(loader))
        entry = {"img_per_s": r["per_s"], "repeats_img_per_s": r["repeats"], "gpu_memory": gpu_memory(device)}
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
        print(f"{loader_name:9s} {stage:7s} {r['per_s']:9.1f} img/s" +
              (f"  {entry['mb_per_s']:7.1f} MB/s" if "mb_per_s" in entry else ""), flush=True)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p, batch_size=128)
    p.add_argument("--split", default="train")
    p.add_argument("--loaders", default="dali,baseline")
    p.add_argument("--stages", default=",".join(STAGES))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    classes = num_classes(args)
    result = {"args": vars(args), "steps": window_steps(args, device),
              "loaders": {name: measure(name, args, device, classes) for name in args.loaders.split(",")}}
    loaders = result["loaders"]
    if "train" in loaders.get("dali", {}) and "train" in loaders.get("baseline", {}):
        result["dali_over_baseline_train"] = loaders["dali"]["train"]["img_per_s"] / loaders["baseline"]["train"][
            "img_per_s"]
        print(f"DALI / baseline, full train augmentation: {result['dali_over_baseline_train']:.2f}x")
    write_json(args.json, result, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
