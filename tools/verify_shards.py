"""`shard_imagenet.py --verify`: re-read a sharded dataset and list everything that is wrong.

Checks each shard against `_info.json` (exists, size, sha256, sample count), the tar against its
DALI index (same members, offsets and sizes), every sample (a `jpg` and a `cls`, label in range)
and, with decode=True, that every image decodes.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from pipeline.shards import INFO_NAME, ShardError, group_samples, idx_path, parse_cls, read_idx, scan_tar


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_shard(tar: Path, num_classes: int, decode: bool) -> tuple[int, list[str]]:
    """(samples found, problems) for one shard and its index."""
    try:
        samples = group_samples(scan_tar(tar))
        idx = idx_path(tar)
        if not idx.exists():
            return len(samples), [f"{idx}: index file missing"]
        if read_idx(idx) != samples:
            return len(samples), [f"{idx}: does not match {tar.name} (tampered or stale index)"]
    except ShardError as e:
        return 0, [str(e)]
    problems = []
    with open(tar, "rb") as f:
        for members in samples:
            by_ext = {m.ext: m for m in members}
            where = f"{tar}: sample {members[0].key}"
            if "jpg" not in by_ext or "cls" not in by_ext:
                problems.append(f"{where}: missing {'jpg' if 'jpg' not in by_ext else 'cls'}")
                continue
            try:
                f.seek(by_ext["cls"].offset)
                parse_cls(f.read(by_ext["cls"].size), num_classes, where)
            except ShardError as e:
                problems.append(str(e))
            if decode:
                f.seek(by_ext["jpg"].offset)
                try:
                    Image.open(io.BytesIO(f.read(by_ext["jpg"].size))).load()
                except Exception as e:  # PIL raises many types for bad data
                    problems.append(f"{where}: jpg does not decode ({type(e).__name__}: {e})")
    return len(samples), problems


def verify(out: Path, decode: bool = True) -> list[str]:
    """All problems found in the dataset at `out` (an empty list means it is sound)."""
    try:
        info = json.loads((out / INFO_NAME).read_text())
        splits, num_classes = info["splits"], len(info["classes"])
    except (OSError, KeyError, json.JSONDecodeError) as e:
        return [f"{out / INFO_NAME}: unreadable manifest ({e})"]
    problems = []
    for split in splits.values():
        for i, name in enumerate(split["filenames"]):
            tar = out / name
            if not tar.exists():
                problems.append(f"{tar}: missing")
                continue
            if tar.stat().st_size != split["shard_bytes"][i] or _sha256(tar) != split["shard_sha256"][i]:
                problems.append(f"{tar}: size or sha256 differs from {INFO_NAME}")
            count, found = verify_shard(tar, num_classes, decode)
            problems += found
            if count and count != split["shard_lengths"][i]:
                problems.append(f"{tar}: {count} samples, {INFO_NAME} says {split['shard_lengths'][i]}")
    return problems
