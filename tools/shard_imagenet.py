#!/usr/bin/env python
"""Shard ImageNet once into WebDataset tars + DALI index files + a timm-compatible `_info.json`.

    python tools/shard_imagenet.py --src SRC --out OUT [--splits train,val] [--val-labels FILE]
        [--samples-per-shard N | --shard-size-mb MB] [--shards-multiple-of K]
        [--max-side PX --quality Q] [--check decode|header] [--workers N] [--seed S] [--verify]
    python tools/shard_imagenet.py --verify --out OUT      # re-read and check existing shards

SRC is the ImageNet folder layout (train/<wnid>/*.JPEG, val/ as class folders or flat) or a folder
holding the original archives (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar), read in place.
Re-running the same command after a kill skips finished shards; the output is byte-identical to
an uninterrupted run. Exit codes: 0 done, 1 --verify found problems, 2 bad input or an output
that cannot be written (disk full, read-only; one line naming the path, no partial shard left).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from pipeline.atomic import atomic_write, stale_temps
from pipeline.shards import INFO_NAME, SPLIT_ALIASES, file_sha256, idx_path
from tools.imagenet_sources import SourceError, list_split
from tools.shard_writer import ImageOptions, write_shard

VERSION = "1.0"
PREFIX = "imagenet1k"
STATE = ".shard_state"  # per-shard records of an unfinished run; removed when _info.json is written
# Arguments that change the output bytes; a rerun with other values must not mix shards.
OUTPUT_ARGS = ("src", "splits", "val_labels", "samples_per_shard", "shard_size_mb",
               "shards_multiple_of", "max_side", "quality", "check", "seed")


class UsageError(ValueError):
    """Bad input: one line naming the path or value; exit code 2."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", type=Path, help="ImageNet folder layout or folder with the original archives")
    p.add_argument("--out", type=Path, required=True, help="output folder for shards and _info.json")
    p.add_argument("--splits", default="train,val", help="comma list of train, val")
    p.add_argument("--val-labels", type=Path, help="LOC_val_solution.csv or ILSVRC2012_devkit_t12.tar.gz")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--samples-per-shard", type=int, help="samples per shard")
    size.add_argument("--shard-size-mb", type=float, default=None, help="target shard size (default 128 MB)")
    p.add_argument("--shards-multiple-of", type=int, default=1, help="round the shard count up to a multiple")
    p.add_argument("--max-side", type=int, help="re-encode images whose long side exceeds PX")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    p.add_argument("--check", choices=("decode", "header"), default="decode", help="image check per file")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the global train shuffle")
    p.add_argument("--verify", action="store_true", help="re-read the output and check it (after writing)")
    args = p.parse_args(argv)
    for name in ("samples_per_shard", "shard_size_mb", "shards_multiple_of", "max_side", "workers"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    if not 1 <= args.quality <= 100:
        p.error(f"--quality must be in 1..100, got {args.quality}")
    if args.src is None and not args.verify:
        p.error("--src is required (or --verify alone to check existing shards)")
    return args


def plan_shards(n_samples: int, total_bytes: int, args) -> list[tuple[int, int]]:
    """[start, end) sample ranges of equal size (+-1); count rounded up to --shards-multiple-of."""
    if args.samples_per_shard:
        n = math.ceil(n_samples / args.samples_per_shard)
    else:
        n = math.ceil(total_bytes / ((args.shard_size_mb or 128) * 2**20))
    k = args.shards_multiple_of
    n = max(1, math.ceil(n / k) * k)
    if n > n_samples:
        raise UsageError(f"{n} shards requested for only {n_samples} samples (--shards-multiple-of {k})")
    return [(i * n_samples // n, (i + 1) * n_samples // n) for i in range(n)]


def fingerprint(args) -> dict:
    d = {k: getattr(args, k) for k in OUTPUT_ARGS}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def prepare_out(out: Path, fp: dict) -> None:
    """Create OUT, or accept it when it holds a run of the same arguments; clean stale temp files."""
    state = out / STATE
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: output exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        prev = state / "args.json" if (state / "args.json").exists() else out / INFO_NAME
        try:
            prev_fp = json.loads(prev.read_text())
            prev_fp = prev_fp.get("tool", {}).get("args", prev_fp)
        except (OSError, json.JSONDecodeError):
            prev_fp = None
        if prev_fp != fp:
            raise UsageError(f"{out}: holds other data or shards from other arguments; use an empty folder")
    state.mkdir(parents=True, exist_ok=True)
    for f in stale_temps(out) + stale_temps(state):  # a killed run's temp files
        f.unlink()
    atomic_write(state / "args.json", json.dumps(fp, sort_keys=True).encode())


def _work(job):
    """Pool worker: write one shard, then its record (a shard counts as done once both exist)."""
    tar_path, samples, labels, opt, record_path = job
    rec = write_shard(tar_path, samples, labels, opt)
    atomic_write(record_path, json.dumps(rec, sort_keys=True).encode())
    return rec


def shard_split(split: str, samples, classes, args, pool) -> dict:
    """Write one split's shards (skipping finished ones) and return its manifest entry."""
    labels = {w: i for i, w in enumerate(classes)}
    unknown = sorted({s.wnid for s in samples} - labels.keys())
    if unknown:
        raise UsageError(f"{args.src}: {split} labels name classes not in train: {unknown[:3]}")
    if split == "train":
        random.Random(args.seed).shuffle(samples)  # global shuffle: DALI only shuffles locally
    total_bytes = sum(s.size if s.size >= 0 else os.path.getsize(s.path) for s in samples)
    ranges = plan_shards(len(samples), total_bytes, args)
    opt = ImageOptions(args.check, args.max_side, args.quality)
    names = [f"{PREFIX}-{split}-{i:06d}.tar" for i in range(len(ranges))]
    records = {}
    jobs = []
    for name, (a, b) in zip(names, ranges):
        rec_path = args.out / STATE / f"{name}.json"
        if (args.out / name).exists() and rec_path.exists():
            records[name] = json.loads(rec_path.read_text())
        else:
            jobs.append((str(args.out / name), samples[a:b], labels, opt, str(rec_path)))
    done = sum(r["count"] + len(r["skipped"]) for r in records.values())
    with tqdm(total=len(samples), initial=done, unit="img", desc=split, disable=None) as bar:
        for rec in pool.imap_unordered(_work, jobs):
            records[rec["file"]] = rec
            bar.update(rec["count"] + len(rec["skipped"]))
    recs = [records[n] for n in names]
    return {
        "name": split, "num_samples": sum(r["count"] for r in recs), "filenames": names,
        "shard_lengths": [r["count"] for r in recs], "shard_bytes": [r["bytes"] for r in recs],
        "shard_sha256": [r["sha256"] for r in recs],
        "shard_idx_sha256": [r.get("idx_sha256") or file_sha256(idx_path(args.out / r["file"])) for r in recs],
        "skipped": [x for r in recs for x in r["skipped"]],
        "reencoded": [x for r in recs for x in r["reencoded"]],
    }


def run(args) -> dict:
    """Shard every requested split; returns the manifest written to OUT/_info.json."""
    splits = [SPLIT_ALIASES.get(s.strip()) for s in args.splits.split(",")]
    if None in splits or not splits:
        raise UsageError(f"--splits {args.splits!r}: use a comma list of train, val")
    if not args.src.is_dir():
        raise UsageError(f"{args.src}: source folder does not exist")
    fp = fingerprint(args)
    info_file = args.out / INFO_NAME
    if info_file.exists() and not (args.out / STATE).exists():
        try:
            info = json.loads(info_file.read_text())
        except json.JSONDecodeError:
            raise UsageError(f"{info_file}: not valid JSON; use an empty output folder") from None
        if info.get("tool", {}).get("args") == fp:
            return info  # already complete: same arguments, nothing to do
    listed = {s: list_split(args.src, s, args.val_labels) for s in splits}
    train_wnids = {x.wnid for x in listed["train"][0]} if "train" in listed else set()
    classes = sorted(train_wnids or {x.wnid for x in listed["validation"][0]})
    prepare_out(args.out, fp)
    info = {"name": "imagenet-1k", "classes": classes, "num_classes": len(classes), "splits": {},
            "tool": {"name": "firehose shard_imagenet", "version": VERSION, "args": fp}}
    with Pool(args.workers) as pool:
        for split, (samples, problems) in listed.items():
            entry = shard_split(split, samples, classes, args, pool)
            entry["skipped"] = problems + entry["skipped"]
            info["splits"][split] = entry
    atomic_write(args.out / INFO_NAME, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode())
    shutil.rmtree(args.out / STATE)
    return info


def summarize(info: dict, seconds: float) -> str:
    lines = []
    total = 0
    for name, s in info["splits"].items():
        total += s["num_samples"] + len(s["skipped"])
        mb = sum(s["shard_bytes"]) / 2**20
        lines.append(f"{name}: {s['num_samples']} samples in {len(s['filenames'])} shards ({mb:.1f} MiB), "
                     f"{len(s['reencoded'])} re-encoded, {len(s['skipped'])} skipped")
        lines += [f"  skipped {x['file']}: {x['reason']}" for x in s["skipped"][:20]]
    lines.append(f"{len(info['classes'])} classes; {total} images in {seconds:.1f} s "
                 f"({total / max(seconds, 1e-9):.0f} img/s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.src is not None:
            info = run(args)
            print(summarize(info, time.perf_counter() - t0))
        if args.verify:
            from tools.verify_shards import verify  # only --verify needs it

            problems = verify(args.out, decode=args.check == "decode")
            for p in problems:
                print(f"verify: {p}", file=sys.stderr)
            print(f"verify: {args.out}: {'OK' if not problems else f'{len(problems)} problems'}")
            return 1 if problems else 0
    except (UsageError, SourceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only output: finished shards stay, a re-run continues
        print(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
