"""The on-disk shard format, shared by the sharding tool (writes), the loaders (read) and --verify.

A split is a list of WebDataset tars `PREFIX-{split}-NNNNNN.tar`, each with a DALI index beside it
(`.idx`, the `wds2idx` v1.2 text format: a header `v1.2 N`, then one line per sample listing
`ext data_offset size member_name` for each of its files). `_info.json` (timm-compatible) holds the
splits, the class list and, per shard, its size and the sha256 of its tar and of its index.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INFO_NAME = "_info.json"
IDX_VERSION = "v1.2"
TAR_BLOCK = 512
SPLIT_ALIASES = {"val": "validation", "validation": "validation", "train": "train"}


class ShardError(ValueError):
    """Bad shard data; the message names the file (and the sample key where there is one)."""


class PipelineError(RuntimeError):
    """A loader failed for a reason that is not the data: out of memory, a bad argument, a CUDA fault."""


@dataclass(frozen=True)
class Member:
    """One regular file inside a tar: `name`, data offset in bytes from the tar start, size in bytes."""

    name: str
    offset: int
    size: int

    @property
    def key(self) -> str:
        return self.name[: self.name.find(".", self.name.rfind("/") + 1)] if "." in self.name else self.name

    @property
    def ext(self) -> str:
        return self.name[len(self.key) + 1 :]


@dataclass(frozen=True)
class SplitInfo:
    """One split of a sharded dataset: absolute shard paths, samples per shard, class names; from
    the manifest where there is one, each shard's size in bytes (0: unknown) and the sha256 of its
    tar and index files (file name -> hex digest); `source` (pipeline/stage.py's ShardSource) when
    the files are staged from object storage and may not all be there yet."""

    name: str
    files: tuple[Path, ...]
    shard_lengths: tuple[int, ...]
    classes: tuple[str, ...]
    shard_bytes: tuple[int, ...] = ()
    sha256: tuple[tuple[str, str], ...] = ()
    source: Any = None

    @property
    def num_samples(self) -> int:
        return sum(self.shard_lengths)


def sample_name(tar: str | Path, key: str) -> str:
    """How every error names a sample: 'shard.tar: sample KEY'."""
    return f"{tar}: sample {key}"


def idx_path(tar_path: str | Path) -> Path:
    """The DALI index file beside a shard: `x.tar` -> `x.idx`."""
    p = Path(tar_path)
    return p.with_name(p.name[: -len(".tar")] + ".idx") if p.name.endswith(".tar") else p.with_suffix(".idx")


def format_idx(samples: list[list[Member]]) -> str:
    """The v1.2 index text for samples given as lists of their members (in tar order)."""
    lines = [f"{IDX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in sample) for sample in samples]
    return "\n".join(lines) + "\n"


def parse_idx_line(line: str, path: str | Path, lineno: int | str = "") -> list[Member]:
    """One v1.2 index line (`ext offset size name` per member) -> the sample's members; ShardError
    naming the file (and line) when it is malformed."""
    f = line.split()
    where = f"{path}:{lineno}" if lineno != "" else str(path)
    if not f or len(f) % 4:
        raise ShardError(f"{where}: malformed index line")
    try:
        return [Member(f[i + 3], int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)]
    except ValueError:
        raise ShardError(f"{where}: offset or size is not an integer") from None


def read_idx(path: str | Path) -> list[list[Member]]:
    """Parse a v1.2 index into samples; raises ShardError naming the file on any malformed line."""
    lines = Path(path).read_text().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != IDX_VERSION or not head[1].isdigit():
        raise ShardError(f"{path}: not a {IDX_VERSION} DALI index (header {lines[:1]})")
    samples = [parse_idx_line(line, path, n) for n, line in enumerate(lines[1:], start=2)]
    if len(samples) != int(head[1]):
        raise ShardError(f"{path}: header says {head[1]} samples, index lists {len(samples)}")
    return samples


def slice_idx(path: str | Path, first: int, stop: int) -> str:
    """The index text of samples [first, stop) of a shard, from its index's lines as they are (the
    offsets are within the tar, so the shard is read through it unchanged). ShardError naming the
    file when the index has fewer lines than that."""
    with open(path) as f:
        lines = f.read().splitlines()[1 + first : 1 + stop]
    if len(lines) != stop - first:
        raise ShardError(f"{path}: index lists fewer than {stop} samples")
    return "\n".join([f"{IDX_VERSION} {stop - first}", *lines]) + "\n"


def scan_tar(path: str | Path) -> list[Member]:
    """Regular-file members of a tar with their data offsets, read from the headers only.

    Raises ShardError naming the file when the tar is truncated or its headers are corrupt.
    """
    size = os.path.getsize(path)
    members = []
    try:
        with tarfile.open(path, "r:") as tf:
            for ti in tf:
                if ti.isreg():
                    if ti.offset_data + ti.size > size:
                        raise ShardError(f"{path}: truncated inside member {ti.name}")
                    members.append(Member(ti.name, ti.offset_data, ti.size))
            end = tf.offset  # where the end-of-archive marker (two zero blocks) must start
        with open(path, "rb") as f:
            f.seek(end)
            if f.read(2 * TAR_BLOCK) != bytes(2 * TAR_BLOCK):
                after = f" after member {members[-1].name}" if members else ""
                raise ShardError(f"{path}: truncated{after} (no end-of-archive marker)")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"{path}: unreadable tar ({e})") from None
    return members


def group_samples(members: list[Member]) -> list[list[Member]]:
    """Consecutive members with the same key form one sample (the WebDataset convention)."""
    samples: list[list[Member]] = []
    for m in members:
        if samples and samples[-1][0].key == m.key:
            samples[-1].append(m)
        else:
            samples.append([m])
    return samples


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_split(data: str | Path, split: str, require_files: bool = True) -> SplitInfo:
    """Shards of one split from a dataset folder (with `_info.json`) or a brace/glob-free list.

    `data` is a folder written by tools/shard_imagenet.py or in timm's `imagenet-1k-wds` layout.
    Without `_info.json`, shards named `*-{split}-*.tar` are taken in sorted order and their
    lengths read from the index files (or tar headers when there is no index). `require_files`:
    every listed shard must exist (False for a mirror that is still being staged).
    """
    root = Path(data)
    split = SPLIT_ALIASES.get(split, split)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder does not exist")
    info_file = root / INFO_NAME
    if info_file.exists():
        try:
            info = json.loads(info_file.read_text())
            s = info["splits"][split]
            files = tuple(root / f for f in s["filenames"])
            lengths = tuple(int(n) for n in s["shard_lengths"])
            sizes = tuple(int(n) for n in s.get("shard_bytes", [0] * len(files)))
            digests = tuple(zip(s["filenames"], s.get("shard_sha256", ())))
            digests += tuple((idx_path(f).name, d) for f, d in zip(s["filenames"], s.get("shard_idx_sha256", ())))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise ShardError(f"{info_file}: no usable split {split!r} ({e!s})") from None
        classes = tuple(info.get("classes", ()))
    else:
        files = tuple(sorted(root.glob(f"*-{split}-*.tar")))
        lengths = tuple(_count_samples(f) for f in files)
        classes, sizes, digests = (), (), ()
    if not files:
        raise ShardError(f"{root}: no shards for split {split!r}")
    missing = [str(f) for f in files if require_files and not f.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: shard listed in {INFO_NAME} does not exist")
    return SplitInfo(split, files, lengths, classes, sizes, digests)


def _count_samples(tar: Path) -> int:
    """Samples in a shard: the index header's count (one line read), else a scan of the tar headers."""
    idx = idx_path(tar)
    if not idx.exists():
        return len(group_samples(scan_tar(tar)))
    with open(idx) as f:
        head = f.readline().split()
    if len(head) != 2 or head[0] != IDX_VERSION or not head[1].isdigit():
        raise ShardError(f"{idx}: not a {IDX_VERSION} DALI index (header {' '.join(head)[:40]!r})")
    return int(head[1])
