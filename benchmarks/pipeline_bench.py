"""Input pipeline throughput, per stage and per loader, side by side on the same shards and cores.

    python -m benchmarks.pipeline_bench --data OUT [--split train] [--loaders dali,baseline]
        [--device cpu|gpu] [--batch-size 128] [--image-size 224] [--warmup N] [--steps N]
        [--repeats R] [--threads N] [--json FILE]

Stages: `read` (shard bytes only: samples/s and MB/s), `decode` (full-size decode), `train` (the
whole train augmentation, handed over as the trainer receives it). Median of repeats after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator

import numpy as np
import torch

from benchmarks.timing import machine, rate, resolve_device
from pipeline.config import DataConfig
from pipeline.loader import build_loader

STAGES = ("read", "decode", "train")


def endless(epoch_batches) -> Iterator:
    """Batches from epoch 0, 1, 2, ... without end (benchmarks outlast small datasets)."""
    epoch = 0
    while True:
        yield from epoch_batches(epoch)
        epoch += 1


def dali_batches(loader, stage: str) -> tuple[Iterator, callable, callable]:
    """(batches, count, nbytes) for one DALI stage; `train` is the loader the trainer uses."""
    if stage == "train":
        return endless(loader.epoch), lambda b: len(b[1]), None
    from pipeline.dali import build_pipeline

    dev = loader.device
    pipe = build_pipeline(loader.cfg, [str(f) for f in loader.split.files], loader.rank, loader.world,
                          (dev.index or 0) if dev.type == "cuda" else None, loader.image_size, 0, stage)
    batches = iter(pipe.run, None)  # the reader wraps around at the end of its shard
    nbytes = (lambda b: int(sum(np.prod(s) for s in b[0].shape()))) if stage == "read" else None
    return batches, lambda b: len(b[1]), nbytes


def baseline_batches(loader, stage: str) -> tuple[Iterator, callable, callable]:
    if stage == "train":
        return endless(loader.epoch), lambda b: len(b[1]), None
    batches = endless(lambda e: iter(loader.dataloader(e, stage)))
    nbytes = (lambda b: int(b[0].sum())) if stage == "read" else None
    return batches, lambda b: len(b[0]), nbytes


def measure(loader_name: str, args, device: torch.device) -> dict:
    """Every stage of one loader -> {stage: figures}."""
    cfg = DataConfig(path=args.data, loader=loader_name, batch_size=args.batch_size, image_size=args.image_size,
                     val_image_size=args.image_size, num_threads=args.threads, workers=args.threads,
                     shuffle_buffer=args.shuffle_buffer, hw_decoder_load=args.hw_decoder_load)
    loader = build_loader(cfg, args.split, 0, 1, device)
    make = dali_batches if loader_name == "dali" else baseline_batches
    out = {}
    for stage in args.stages.split(","):
        batches, count, nbytes = make(loader, stage)
        r = rate(batches, count, device, args.warmup, args.steps, args.repeats)
        entry = {"img_per_s": r["per_s"], "repeats_img_per_s": r["repeats"], "device": str(device)}
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="shard folder (tools/shard_imagenet.py output)")
    p.add_argument("--split", default="train")
    p.add_argument("--loaders", default="dali,baseline")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="DALI threads = baseline workers")
    p.add_argument("--shuffle-buffer", type=int, default=1024)
    p.add_argument("--hw-decoder-load", type=float, default=0.65, help="share of JPEGs on the hardware decoder")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per stage")
    p.add_argument("--steps", type=int, default=10, help="batches per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    result = {"machine": machine(device), "args": vars(args), "loaders": {}}
    for name in args.loaders.split(","):
        result["loaders"][name] = measure(name, args, device)
    loaders = result["loaders"]
    if "dali" in loaders and "baseline" in loaders and "train" in loaders["dali"]:
        result["dali_over_baseline_train"] = loaders["dali"]["train"]["img_per_s"] / loaders["baseline"]["train"][
            "img_per_s"]
        print(f"DALI / baseline, full train augmentation: {result['dali_over_baseline_train']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
