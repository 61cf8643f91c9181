"""The GPU check's data, made once per machine and kept between its tiers: ImageNet-like JPEGs
in shards (make_synthetic_imagenet + shard_imagenet), or ImageNet-scale shards of tiny JPEGs
(make_tiny_shards). A folder whose manifest was written for the same request is reused.

    python -m benchmarks.gpu_data --out DIR --classes N --train-per-class N --val-per-class N
        --per-shard N --json FILE -- [make_synthetic_imagenet image flags]
    python -m benchmarks.gpu_data --tiny --out DIR --json FILE -- --samples N --shards N
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pipeline.atomic import atomic_write
from pipeline.shards import ShardError, load_split
from tools import make_synthetic_imagenet, make_tiny_shards, shard_imagenet

REQUEST = "_request.json"  # beside _info.json: what the folder was made for


def make(args: argparse.Namespace, extra: list[str]) -> None:
    if args.tiny:
        if make_tiny_shards.main(["--out", str(args.out), *extra]) != 0:
            raise SystemExit(f"error: make_tiny_shards failed for {args.out}")
        return
    raw = args.out.with_name(args.out.name + ".raw")
    if make_synthetic_imagenet.main(["--out", str(raw), "--classes", str(args.classes), "--train-per-class",
                                     str(args.train_per_class), "--val-per-class", str(args.val_per_class),
                                     "--force", *extra]) != 0:
        raise SystemExit(f"error: make_synthetic_imagenet failed for {raw}")
    if shard_imagenet.main(["--src", str(raw), "--out", str(args.out), "--samples-per-shard", str(args.per_shard),
                            "--check", "header"]) != 0:
        raise SystemExit(f"error: shard_imagenet failed for {args.out}")
    shutil.rmtree(raw)


def figures(out: Path) -> dict:
    """Sample and shard counts of every split in the folder's manifest."""
    info = json.loads((out / "_info.json").read_text())
    return {"splits": {name: {"samples": load_split(out, name).num_samples, "shards": len(s["filenames"])}
                       for name, s in info["splits"].items()}}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=20)
    p.add_argument("--val-per-class", type=int, default=5)
    p.add_argument("--per-shard", type=int, default=256)
    p.add_argument("--json", required=True)
    args = p.parse_args(ours)
    request = json.dumps({**{k: str(v) for k, v in vars(args).items() if k != "json"}, "extra": extra})
    stamp = args.out / REQUEST
    reused = stamp.exists() and stamp.read_text() == request and (args.out / "_info.json").exists()
    if not reused:
        shutil.rmtree(args.out, ignore_errors=True)
        make(args, extra)
        atomic_write(stamp, request.encode())
    try:
        record = {"reused": reused, **figures(args.out)}
    except (OSError, ValueError, KeyError, ShardError) as e:
        print(f"error: {args.out}: {e}", file=sys.stderr)
        return 2
    atomic_write(args.json, (json.dumps(record, indent=1) + "\n").encode())
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
