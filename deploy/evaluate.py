"""`python -m deploy.evaluate MODEL.onnx --data SHARDS [--batch-size N] [--json OUT]`: ONNX accuracy + speed.

Top-1/top-5 over the whole validation split (every image once) with ONNX Runtime on the CPU, fed
by the project's own validation pipeline, so FP32, INT8 and pruned models are scored exactly
like the trainer scores PyTorch. `infer_img_per_s` is the model alone: session.run on batches
already in memory (decode excluded), after warm-up, the median of repeats. The JSON carries the
provenance record (train.provenance). Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from deploy.data import onnx_input, val_batches
from deploy.io import DeployError, at_least_one, atomic_output, existing, require
from pipeline.pt_file import first_line
from pipeline.throughput import rate
from train.provenance import provenance

WARMUP, REPEATS, TIMED_BATCHES = 2, 5, 4


def session(path: str | Path, threads: int = 0):
    """An ONNX Runtime CPU session for `path` (threads 0 = ORT's default: one per core)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # an invalid graph
        raise DeployError(f"{path}: ONNX Runtime cannot load it ({first_line(e)})") from None


def run_rate(run, batches: list[np.ndarray], warmup: int = WARMUP, repeats: int = REPEATS) -> dict:
    """Images/s of `run(batch)` over `batches` already in memory: `warmup` untimed passes, then the
    median of `repeats` timed passes (each over every batch)."""
    def ran() -> Iterator[np.ndarray]:
        for b in itertools.cycle(batches):
            run(b)
            yield b
    return rate(ran(), len, torch.device("cpu"), warmup * len(batches), len(batches), repeats)


def evaluate_onnx(path: str | Path, shards: str | Path, batch_size: int) -> dict:
    """{"top1", "top5" (percent), "samples", "infer_img_per_s", "batch_size"} of the model at `path`
    over the validation split of `shards`."""
    sess = session(path)
    name, channels, side = onnx_input(path)
    run = lambda images: sess.run(None, {name: images})[0]
    correct1 = correct5 = samples = 0
    kept = []
    for images, labels in val_batches(shards, batch_size, channels, side):
        logits = run(images)
        top = np.argsort(-logits, axis=1)[:, :5]
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(axis=1).sum())
        samples += len(labels)
        if len(kept) < TIMED_BATCHES and len(images) == batch_size:
            kept.append(images)
    if not kept:
        raise DeployError(f"{shards}: fewer than {batch_size} validation images: no full batch to time")
    speed = run_rate(run, kept)
    return {"top1": 100.0 * correct1 / samples, "top5": 100.0 * correct5 / samples, "samples": samples,
            "infer_img_per_s": speed["per_s"], "infer_img_per_s_repeats": speed["repeats"],
            "batch_size": batch_size, "image_size": side}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ONNX model (FP32 or QDQ INT8)")
    parser.add_argument("--data", required=True, help="shard folder; its whole validation split is scored")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=None, help="write the result (with provenance) here")
    args = parser.parse_args(argv)
    try:
        existing(args.model)
        at_least_one(batch_size=args.batch_size)
        result = {"model": str(args.model), **evaluate_onnx(args.model, args.data, args.batch_size),
                  "provenance": provenance(torch.device("cpu"))}
        if args.json:
            with atomic_output(args.json) as tmp:
                tmp.write_text(json.dumps(result, indent=2) + "\n")
    except DeployError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% over {result['samples']} "
          f"images; {result['infer_img_per_s']:.1f} img/s inference alone (batch {args.batch_size}, "
          f"{result['image_size']} px, ONNX Runtime CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
