"""What the benchmark commands share: one argument parser for the data and timing flags, the
DataConfig built from it, and the JSON record every benchmark writes (with provenance)."""

from __future__ import annotations

import argparse
import json

import torch

from pipeline.atomic import atomic_write
from pipeline.config import DataConfig, dali_threads
from pipeline.shards import load_split
from train.provenance import provenance

IMAGENET_CLASSES = 1000


def add_data_args(p: argparse.ArgumentParser, batch_size: int, image_size: int = 224) -> None:
    """--data, --device, --batch-size, --image-size, --threads, --shuffle-buffer, --hw-decoder-load,
    --num-classes, --warmup, --steps, --repeats, --json."""
    p.add_argument("--data", required=True, help="shard folder (tools/shard_imagenet.py output, or timm's layout)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--image-size", type=int, default=image_size, help="px")
    p.add_argument("--threads", type=int, default=0,
                   help="DALI threads = baseline workers (0: this process's cores minus one)")
    p.add_argument("--shuffle-buffer", type=int, default=1024)
    p.add_argument("--hw-decoder-load", type=float, default=0.65, help="share of JPEGs on the hardware decoder")
    p.add_argument("--num-classes", type=int, help="label range (default: the manifest's class list, else 1000)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches")
    p.add_argument("--steps", type=int, default=10, help="batches per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the figures here (with provenance)")


def data_config(args: argparse.Namespace, loader: str) -> DataConfig:
    """The DataConfig a benchmark's loaders use, from the shared flags."""
    cfg = DataConfig(path=args.data, loader=loader, batch_size=args.batch_size, image_size=args.image_size,
                     val_image_size=args.image_size, num_threads=args.threads, shuffle_buffer=args.shuffle_buffer,
                     hw_decoder_load=args.hw_decoder_load)
    cfg.workers = dali_threads(cfg)  # the same CPU budget for both loaders
    return cfg


def num_classes(args: argparse.Namespace) -> int:
    """--num-classes, else the manifest's class list, else ImageNet-1k's 1000 (timm's layout has no list)."""
    if args.num_classes:
        return args.num_classes
    return len(load_split(args.data, "train").classes) or IMAGENET_CLASSES


def write_json(path: str | None, result: dict, device: torch.device) -> None:
    """The figures with the provenance record, written atomically (nothing when path is None)."""
    if path:
        record = {"provenance": provenance(device), **result}
        atomic_write(path, (json.dumps(record, indent=1) + "\n").encode())
