"""`shard_imagenet.py --verify`: re-read a sharded dataset and list everything that is wrong.

Checks each shard against `_info.json` (exists, size, sha256 of tar and index, sample count), then the tar against
its DALI index, every label and (decode=True) every image, with pipeline.check.shard_problems.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.check import shard_problems
from pipeline.shards import INFO_NAME, file_sha256, idx_path


def verify(out: Path, decode: bool = True) -> list[str]:
    """All problems found in the dataset at `out` (an empty list means it is sound)."""
    try:
        info = json.loads((out / INFO_NAME).read_text())
        splits, num_classes = info["splits"], len(info["classes"])
    except (OSError, KeyError, json.JSONDecodeError) as e:
        return [f"{out / INFO_NAME}: unreadable manifest ({e})"]
    problems = []
    for split in splits.values():
        for name, count, size, sha in zip(split["filenames"], split["shard_lengths"],
                                          split["shard_bytes"], split["shard_sha256"]):
            tar = out / name
            if not tar.exists():
                problems.append(f"{tar}: missing")
                continue
            if tar.stat().st_size != size or file_sha256(tar) != sha:
                problems.append(f"{tar}: size or sha256 differs from {INFO_NAME}")
            idx_sha = dict(zip(split["filenames"], split.get("shard_idx_sha256", []))).get(name)
            idx = idx_path(tar)
            if idx_sha and idx.exists() and file_sha256(idx) != idx_sha:
                problems.append(f"{idx}: sha256 differs from {INFO_NAME}")
            problems += shard_problems(tar, num_classes, decode, expected=count)
    return problems
