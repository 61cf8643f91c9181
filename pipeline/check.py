"""Checking shards: a cheap pre-flight before training, the full check that names a bad sample, and
the triage of a loader's errors (about the data, or not) that decides when to look for one.

The pre-flight reads a few hundred bytes per shard (the index's header, first and last line, and
the tar's size) and none of the data, so every rank can afford it over all of ImageNet's shards: a
count that disagrees with the manifest, a layout without jpg/cls or a truncated tar stops the run
before any work. The full check (`shard_imagenet.py --verify`, and the loaders' search for the
sample behind a failed read) re-reads the tar headers against the index, parses every label and
decodes every image.

DALI's errors name an operator, not a sample. Only an error while reading or decoding a sample is
worth a search of the shards; an error at build time (except the reader's: DALI parses the indexes
then), of the environment (a missing library, storage out of reach) or of the device is reported as
itself, at once. No DALI import here: the text of its errors is all the triage needs.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from pipeline.labels import parse_cls
from pipeline.shards import (
    IDX_VERSION,
    TAR_BLOCK,
    Member,
    PipelineError,
    ShardError,
    SplitInfo,
    group_samples,
    idx_path,
    parse_idx_line,
    read_idx,
    sample_name,
    scan_tar,
)

REQUIRED = ("jpg", "cls")
TAIL_BYTES = 4096  # more than any index line (~130 bytes for jpg + cls + json)
SEARCH_S = 60.0  # how long a loader looks for the sample behind a failed read
# Words of an error about a sample (a bad JPEG, tar or index), matched at the start of a word in
# DALI's reason ("tar" only whole), so "start" or "profile" do not count.
DATA_ERROR_WORDS = re.compile(r"\b(decod|jpeg|image|component|index|webdataset|unexpected end|corrupt|offset|file"
                              r"|tar\b)")
# The device, the environment or the config, whatever operator they surface in: never the data
# (a shard that is not there at all is missing, not bad: nothing to search for).
NOT_DATA_WORDS = ("out of memory", "cuda error", "cudaerror", "cuda_error", "argument", "nvml", "driver",
                  "shared object file", "curlcode", "could not connect", "object not found", "file mapping failed",
                  "no such file")
BUILDING = ("when building pipeline", "when constructing operator")  # DALI 2.x, 1.x: an error at build
READER = re.compile(r"readers(\.|__)webdataset")  # the one operator that reads data at build
# Lines of a DALI error that are not its reason: the graph's Python traceback, the C++ context.
NOT_REASON = ("Critical error", "Error in ", "which was used", "File \"", "C++ context", "Current pipeline",
              "Stacktrace", "[frame")


def _head_and_tail(idx: Path) -> tuple[str, str, str]:
    """The header, the first and the last line of an index file, read without parsing the rest."""
    with open(idx, "rb") as f:
        head = f.read(TAIL_BYTES).decode(errors="replace").splitlines()
        f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
        tail = f.read().decode(errors="replace").splitlines()
    return (head[0] if head else ""), (head[1] if len(head) > 1 else ""), (tail[-1] if tail else "")


def preflight(split: SplitInfo) -> None:
    """Raise ShardError naming the shard (and sample key) if its index shows a problem: a sample
    count other than the manifest's, a first or last sample without jpg or cls, or an index that
    points past the end of the tar (a truncated copy). Shards without an index are left to DALI;
    the size check waits for a shard that is still being staged from object storage."""
    for tar, expected in zip(split.files, split.shard_lengths):
        idx = idx_path(tar)
        if not idx.exists():
            continue
        header, first, last = _head_and_tail(idx)
        version, _, count = header.partition(" ")
        if version != IDX_VERSION or not count.strip().isdigit():
            raise ShardError(f"{idx}: not a {IDX_VERSION} DALI index (header {header[:40]!r})")
        if int(count) != expected:
            raise ShardError(f"{tar}: index lists {int(count)} samples, manifest says {expected}")
        if expected == 0:
            continue
        for line in (first, last):
            members = parse_idx_line(line, idx)
            missing = [need for need in REQUIRED if need not in {m.ext for m in members}]
            if missing:
                raise ShardError(f"{sample_name(tar, members[0].key)} has no {missing[0]}")
        members = parse_idx_line(last, idx)
        if not os.path.exists(tar):  # still being staged (pipeline/stage.py): checked by sha256 on arrival
            continue
        if max(m.offset + m.size for m in members) + 2 * TAR_BLOCK > os.path.getsize(tar):
            raise ShardError(f"{tar}: truncated at sample {members[0].key} (the index points past "
                             f"the end of the file)")


def check_index(tar: str | Path, expected: int | None = None) -> list[list[Member]]:
    """A shard's samples from its tar headers, checked against its index (when there is one) and
    against the manifest's count `expected`; ShardError naming the file and sample on the first
    disagreement. Reads headers only, no image data."""
    samples = group_samples(scan_tar(tar))
    idx = idx_path(tar)
    if idx.exists():
        listed = read_idx(idx)
        for a, b in zip(listed, samples):
            if a != b:
                raise ShardError(f"{idx}: sample {a[0].key} does not match {Path(tar).name} (tampered or stale index)")
        if len(listed) != len(samples):
            raise ShardError(f"{idx}: lists {len(listed)} samples, {Path(tar).name} holds {len(samples)}")
    if expected is not None and len(samples) != expected:
        raise ShardError(f"{tar}: holds {len(samples)} samples, the manifest says {expected}")
    return samples


def _decodes(data: bytes) -> str | None:
    try:
        im = Image.open(io.BytesIO(data))
        # 1/8 DCT scaling: the whole stream is still decoded (a corrupt one still fails), the pixels cost less
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
        return None
    except Exception as e:  # PIL raises many types for bad data
        return f"{type(e).__name__}: {e}"


def sample_problems(tar: Path, samples: list[list[Member]], num_classes: int | None,
                    decode: bool) -> Iterator[str]:
    """Each sample's problems (missing jpg/cls, bad label, undecodable image), naming the key."""
    if not samples:
        yield f"{tar}: no samples"
    with open(tar, "rb") as f:
        for members in samples:
            by_ext = {m.ext: m for m in members}
            name = sample_name(tar, members[0].key)
            missing = [e for e in REQUIRED if e not in by_ext]
            if missing:
                yield f"{name} has no {missing[0]}"
                continue
            try:
                f.seek(by_ext["cls"].offset)
                parse_cls(f.read(by_ext["cls"].size), num_classes, name)
            except ShardError as e:
                yield str(e)
            if decode:
                f.seek(by_ext["jpg"].offset)
                err = _decodes(f.read(by_ext["jpg"].size))
                if err:
                    yield f"{name}: jpg does not decode ({err})"


def shard_problems(tar: Path, num_classes: int | None, decode: bool = True,
                   expected: int | None = None) -> Iterator[str]:
    """Every problem of one shard, each naming the shard and, where there is one, the sample key."""
    try:
        samples = check_index(tar, expected)
    except ShardError as e:
        yield str(e)
        return
    yield from sample_problems(tar, samples, num_classes, decode)


def first_problem(files: list[str], num_classes: int | None, seconds: float = SEARCH_S) -> tuple[str | None, str]:
    """(The first problem in `files`, in reading order, or None; what was checked). The search
    stops after `seconds`. For explaining a failed DALI read."""
    t0 = time.monotonic()
    for checked, tar in enumerate(files):
        if time.monotonic() - t0 > seconds:
            return None, f"checked the first {checked} of this rank's {len(files)} shards in {seconds:.0f} s"
        for problem in shard_problems(Path(tar), num_classes):
            return problem, f"checked {checked + 1} of this rank's {len(files)} shards"
    return None, f"checked all {len(files)} of this rank's shards: no bad sample found"


# --- a loader's errors ----------------------------------------------------------------------------

def dali_reason(e: Exception) -> str:
    """DALI's own words for error `e`, one line: "operator: what it encountered" (its messages wrap
    them in the pipeline's Python traceback and a C++ context)."""
    text = str(e)
    op = re.search(r"operator[:\s]\s*`?(?:nvidia\.dali\.fn\.)?(\w+?(?:\.\w+|__\w+)+)", text)
    body = text.rpartition("encountered:")[2] or text
    lines = [re.sub(r'^(Error in thread \d+: )?(\[/opt/dali[^\]]*\] ?)?(Assert on ".*?" failed: )?', "", ln.strip())
             for ln in body.splitlines()]
    useful = [ln for ln in lines if ln and not ln.startswith(NOT_REASON) and not ln[:1].isdigit()]
    reason = " ".join(useful[:2]) or text.strip()
    return (f"{op.group(1)}: {reason}" if op and op.group(1) not in reason else reason)[:500]


def is_data_error(e: Exception, building: bool = False) -> bool:
    """Whether DALI error `e` (raised at build when `building`) is about the data: worth looking
    for the bad sample. At build only the reader's errors are (a bad index line)."""
    if any(w in str(e).lower() for w in NOT_DATA_WORDS):
        return False
    reason = dali_reason(e).lower()
    if building or any(w in str(e).lower() for w in BUILDING):
        return READER.search(reason) is not None
    return DATA_ERROR_WORDS.search(reason) is not None


def explain(e: Exception, files: list[str], num_classes: int | None, data_path: str,
            building: bool = False) -> Exception:
    """What a loader raises for DALI error `e`: for a data error, ShardError naming the first bad
    sample of `files` (this rank's shards, in reading order; searched for at most SEARCH_S), or
    `data_path` with DALI's reason if none is found; for any other error, PipelineError with the reason."""
    reason = dali_reason(e)
    if not is_data_error(e, building):
        return PipelineError(f"DALI failed: {reason}")
    print(f"DALI failed ({reason}); looking for the bad sample in this rank's shards...", file=sys.stderr)
    problem, checked = first_problem(files, num_classes)
    return ShardError(problem or f"{data_path}: {reason} ({checked})")
