"""Sharding speed against its floors, side by side in one run on the same files and cores.

    python -m benchmarks.shard_bench --src IMAGENET_FOLDER [--workers N] [--repeats R] [--json FILE]

Times `tools/shard_imagenet.py --check header` and `--check decode` against `tar -cf` of the same
folder (the I/O floor) and PIL's plain decode of the same files with the same worker count (the
decode floor). Targets: header <= 2x tar; decode >= 80% of PIL's images/s. A missing folder, a
folder without JPEGs or a step that fails is one `error:` line (benchmarks.common.one_line_errors).
"""

from __future__ import annotations

import argparse
import errno
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

from benchmarks.common import one_line_errors, write_json
from pipeline.shards import ShardError


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


def run_step(argv: list[str], what: str) -> None:
    """Run a timed step's command; ShardError naming `what` with the command's last line if it fails."""
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1].removeprefix("error: ")
        raise ShardError(f"{what} failed (exit {r.returncode}): {last}")


def jpeg_files(src: Path) -> list[str]:
    """The ImageNet-layout train JPEGs under `src`; FileNotFoundError naming the folder if none."""
    train = src / "train"
    if not train.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder (ImageNet layout: train/<wnid>/*.JPEG)", str(train))
    files = sorted(str(f) for f in train.rglob("*.JPEG"))
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no train/<wnid>/*.JPEG files in it", str(train))
    return files


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, type=Path, help="ImageNet folder layout (train/<wnid>/*.JPEG)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    files = jpeg_files(args.src)
    n, mb = len(files), sum(os.path.getsize(f) for f in files) / 1e6
    tmp = Path(tempfile.mkdtemp(prefix="shard_bench."))

    def shard(check):
        out = tmp / f"out_{check}"
        shutil.rmtree(out, ignore_errors=True)
        run_step([sys.executable, "-m", "tools.shard_imagenet", "--src", str(args.src), "--out", str(out),
                  "--splits", "train", "--check", check, "--workers", str(args.workers)],  # 128 MB shards
                 f"{args.src}: tools.shard_imagenet --check {check}")

    def tar():
        run_step(["tar", "-cf", str(tmp / "all.tar"), "-C", str(args.src), "train"], f"{args.src}: tar -cf")

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
