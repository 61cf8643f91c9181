"""What the benchmark commands share: one argument parser for the data and timing flags, the
DataConfig and loaders built from it (the production loaders, and `plain`), the GPU memory
figures, the JSON record every benchmark writes (with provenance), and the one-line report of bad
input (pipeline.fatal, as the trainer gives it)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable

import torch

from benchmarks.plain import PlainLoader
from pipeline import fatal
from pipeline.atomic import atomic_write
from pipeline.base import Loader
from pipeline.check import preflight
from pipeline.config import OUTPUTS, DataConfig, dali_threads
from pipeline.loader import build_loader
from pipeline.shards import load_split
from pipeline.throughput import check_window
from train.provenance import provenance

IMAGENET_CLASSES = 1000
# Batches per timed window by default. On a GPU a short window overstates a pipeline's rate: DALI's
# prefetch queue is full when the window starts, and a sync every 10 batches lets it run ahead.
WINDOW_BATCHES = {"cuda": 50, "cpu": 10}


def thread_counts(text: str) -> list[int]:
    """'1,2' -> [1, 2] (argparse type of --threads): each >= 0."""
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 0: {text!r}")
    return counts


def add_data_args(p: argparse.ArgumentParser, batch_size: int, image_size: int = 224) -> None:
    """--data, --device, --batch-size, --image-size, --threads, --output, --shuffle-buffer,
    --hw-decoder-load, --num-classes, --warmup, --steps, --repeats, --json."""
    p.add_argument("--data", required=True, help="shard folder (tools/shard_imagenet.py output, or timm's layout)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--image-size", type=int, default=image_size, help="px")
    p.add_argument("--threads", type=thread_counts, default=[0],
                   help="DALI threads = baseline and plain workers; a list (1,2) sweeps where the command "
                   "does (0: this process's cores minus one)")
    p.add_argument("--output", default=DataConfig.output, choices=OUTPUTS,
                   help="what every loader hands over (data.output): uint8, normalized on the device by the "
                   "training step, or normalized float16")
    p.add_argument("--shuffle-buffer", type=int, default=1024)
    p.add_argument("--hw-decoder-load", type=float, default=0.65, help="share of JPEGs on the hardware decoder")
    p.add_argument("--num-classes", type=int, help="label range (default: the manifest's class list, else 1000)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches")
    p.add_argument("--steps", type=int, help=f"batches per timed repeat, inside one epoch (default: "
                   f"{WINDOW_BATCHES['cuda']} on a GPU, {WINDOW_BATCHES['cpu']} on the CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the figures here (with provenance)")


def one_thread_count(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    """The one --threads value of a command that does not sweep (p.error on a list)."""
    if len(args.threads) != 1:
        p.error(f"--threads: one value here, got {','.join(map(str, args.threads))}")
    return args.threads[0]


def data_config(args: argparse.Namespace, loader: str, threads: int) -> DataConfig:
    """The DataConfig a benchmark's loaders use, from the shared flags, with `threads` DALI threads
    (0: automatic) and as many baseline workers."""
    cfg = DataConfig(path=args.data, loader=loader, batch_size=args.batch_size, image_size=args.image_size,
                     val_image_size=args.image_size, num_threads=threads, shuffle_buffer=args.shuffle_buffer,
                     hw_decoder_load=args.hw_decoder_load, output=args.output)
    cfg.workers = dali_threads(cfg)  # the same CPU budget for every loader
    return cfg


def build_any_loader(args: argparse.Namespace, loader: str, split: str, device: torch.device, classes: int,
                     threads: int) -> Loader:
    """The production loader `loader` (pipeline.loader.build_loader), or `plain`, with the
    pre-flight check of the shards every loader gets."""
    cfg = data_config(args, loader, threads)
    if loader != "plain":
        return build_loader(cfg, split, 0, 1, device, classes)
    info = load_split(cfg.path, split)
    preflight(info)
    return PlainLoader(cfg, info, 0, 1, device, split == "train", classes)


def window_steps(args: argparse.Namespace, device: torch.device) -> int:
    """Batches per timed window: --steps, else the device's default (WINDOW_BATCHES)."""
    return args.steps or WINDOW_BATCHES[device.type]


def timed_loader(args: argparse.Namespace, loader: str, split: str, device: torch.device, classes: int,
                 threads: int) -> Loader:
    """The loader `loader` for `split` with `threads` threads, once one timed window fits in its
    epoch (after the epoch's untimed lead-in); else SystemExit with one `error:` line naming the
    flags to change (or, for data that does not fit the flags, the data)."""
    try:
        built = build_any_loader(args, loader, split, device, classes, threads)
    except ValueError as e:
        if isinstance(e, fatal.INPUT_ERRORS):
            raise
        raise SystemExit(f"error: {e}") from None  # a batch or a worker count the data cannot give
    try:
        check_window(len(built), args.warmup, window_steps(args, device))
    except ValueError as e:
        raise SystemExit(f"error: {args.data} ({split}, {loader}, batch {args.batch_size}): {e}: lower --steps, "
                         "--warmup or --batch-size, or give more data") from None
    return built


def gpu_memory(device: torch.device) -> dict:
    """GPU memory since the last call, in MiB, then torch's peak reset for the next one.
    `torch_peak_allocated_mb`: torch's own tensors at their peak (max_memory_allocated: it leaves
    out DALI's pools, the CUDA contexts and torch's cache). `device_used_mb`: the driver's view
    now, total - free of the whole device (DALI's pools, contexts, caches, other processes).
    Both None off a GPU."""
    if device.type != "cuda":
        return {"torch_peak_allocated_mb": None, "device_used_mb": None}
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return {"torch_peak_allocated_mb": peak / 2**20, "device_used_mb": (total - free) / 2**20}


def num_classes(args: argparse.Namespace) -> int:
    """--num-classes, else the manifest's class list, else ImageNet-1k's 1000 (timm's layout has no list)."""
    if args.num_classes:
        return args.num_classes
    return len(load_split(args.data, "train").classes) or IMAGENET_CLASSES


def one_line_errors(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """`main(argv)`, with bad input (a bad shard, a missing file or folder, a pipeline failure)
    reported as one `error:` line on stderr and its exit code (pipeline.fatal), as the trainer does."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except fatal.INPUT_ERRORS as e:
            print(fatal.error_line(e), file=sys.stderr)
            return fatal.exit_code(e)
    return run


def write_json(path: str | None, result: dict, device: torch.device) -> None:
    """The figures with the provenance record, written atomically (nothing when path is None)."""
    if path:
        record = {"provenance": provenance(device), **result}
        atomic_write(path, (json.dumps(record, indent=1) + "\n").encode())
