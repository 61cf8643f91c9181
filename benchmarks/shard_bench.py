"""Sharding speed against its floors, side by side in one run on the same files and cores.

    python -m benchmarks.shard_bench --src IMAGENET_FOLDER [--workers N] [--repeats R] [--json FILE]

Times `tools/shard_imagenet.py --check header` and `--check decode` against `tar -cf` of the same
folder (the I/O floor) and PIL's plain decode of the same files with the same worker count (the
decode floor). Targets: header <= 2x tar; decode >= 80% of PIL's images/s.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import write_json


def _decode(path: str) -> int:
    """PIL's plain decode of one file (the floor); a bad file costs its failed attempt, as in the tool."""
    try:
        with open(path, "rb") as f:
            im = Image.open(io.BytesIO(f.read()))
            im.load()
        return im.width
    except Exception:  # PIL raises many types for bad data
        return 0


def timed(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls (the page cache is warm after the first)."""
    fn()  # warm-up: file cache, imports
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, type=Path, help="ImageNet folder layout (train/<wnid>/*.JPEG)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    files = sorted(str(f) for f in (args.src / "train").rglob("*.JPEG"))
    n, mb = len(files), sum(os.path.getsize(f) for f in files) / 1e6
    tmp = Path(tempfile.mkdtemp(prefix="shard_bench."))

    def shard(check):
        out = tmp / f"out_{check}"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "tools.shard_imagenet", "--src", str(args.src), "--out", str(out),
                        "--splits", "train", "--check", check, "--workers", str(args.workers)],  # 128 MB shards
                       check=True, capture_output=True)

    def tar():
        subprocess.run(["tar", "-cf", str(tmp / "all.tar"), "-C", str(args.src), "train"], check=True)

    def pil():
        with Pool(args.workers) as pool:
            pool.map(_decode, files, chunksize=16)

    try:
        s = {"tar": timed(tar, args.repeats), "pil_decode": timed(pil, args.repeats),
             "shard_header": timed(lambda: shard("header"), args.repeats),
             "shard_decode": timed(lambda: shard("decode"), args.repeats)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "images": n, "megabytes": mb, "workers": args.workers,
        "seconds": s, "img_per_s": {k: n / v for k, v in s.items()},
        "header_over_tar": s["shard_header"] / s["tar"],
        "decode_vs_pil": s["pil_decode"] / s["shard_decode"],
    }
    for k, v in s.items():
        print(f"{k:13s} {v:7.2f} s  {n / v:8.0f} img/s  {mb / v:7.1f} MB/s")
    print(f"--check header / tar -cf: {result['header_over_tar']:.2f}x (target <= 2)")
    print(f"--check decode / PIL decode (img/s): {result['decode_vs_pil']:.2f} (target >= 0.80)")
    write_json(args.json, result, torch.device("cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
