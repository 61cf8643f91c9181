"""Write ImageNet-scale shards of tiny JPEGs, fast: for start-up and epoch-boundary tests.

    python -m tools.make_tiny_shards --out DIR --samples N --shards K [--classes C]
        [--val-samples M] [--size PX] [--seed S] [--workers W]

The output has the layout tools/shard_imagenet.py writes (`imagenet1k-{train,validation}-NNNNNN.tar`
with `.jpg` + ASCII `.cls` members, a DALI v1.2 `.idx` beside each tar, `_info.json` with the
splits, file names, shard lengths, bytes and sha256 of tars and indexes, and the class list), but the images come from
a small pool of distinct PX x PX JPEGs encoded once, so 1,281,167 samples in 1,024 shards take
seconds, not hours. Labels are drawn from (seed, split, shard); the image of a sample is a
function of its label, so a model could still learn them.

Speed: tar headers are patched from one template (a ustar header is name + size + checksum away
from every other one here) instead of building a TarInfo per member; tests check them
byte-identical to Python's tarfile, and the index to `wds2idx`. Each shard is written under a
temporary name and renamed (index first, tar last), so a killed run leaves no half shard under a
final name. Shards are not fsynced: this is disposable test data, and a rename already protects
against a killed process.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.atomic import atomic_write, stale_temps
from pipeline.shards import IDX_VERSION, INFO_NAME, TAR_BLOCK, idx_path
from tools.make_synthetic_imagenet import make_wnids
from tools.shard_writer import RECORD

PREFIX = "imagenet1k"
POOL = 64  # distinct JPEGs; sample images repeat, which a start-up test does not mind
_ZEROS = bytes(TAR_BLOCK)
_JPG, _CLS = sum(b".jpg"), sum(b".cls")  # checksum share of the member names' suffixes


def _template() -> tuple[bytes, int]:
    """A ustar header as TarIndexWriter writes it (mode 644, mtime 0, no owner names) with an
    empty name and size, and the byte sum of that header (checksum field = 8 spaces)."""
    ti = tarfile.TarInfo("")
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = 0, 0, 0o644, "", ""
    h = bytearray(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
    h[124:136] = bytes(12)
    h[148:156] = b" " * 8
    return bytes(h), sum(h)


_TEMPLATE, _TEMPLATE_SUM = _template()


def ustar_header(name: bytes, size: int) -> bytes:
    """The 512-byte ustar header of a regular file `name` (ASCII, < 100 bytes) of `size` bytes,
    byte-identical to TarInfo.tobuf(USTAR_FORMAT) with mode 644, mtime 0 and no owner names."""
    size_field = b"%011o\0" % size
    chk = b"%06o\0" % (_TEMPLATE_SUM + sum(name) + sum(size_field))
    return b"".join((name, _TEMPLATE[len(name):124], size_field, _TEMPLATE[136:148], chk, _TEMPLATE[155:]))


def jpeg_pool(size: int, n: int = POOL) -> list[bytes]:
    """`n` distinct size x size JPEGs (colour gradients): encoded once, reused by every sample."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        mix = ramp[:, None, None] if i % 2 else ramp[None, :, None]
        px = (a * (1 - mix) + b * mix) * np.ones((size, size, 1), np.float32)
        buf = io.BytesIO()
        Image.fromarray(px.astype(np.uint8)).save(buf, "JPEG", quality=90, optimize=True)
        out.append(buf.getvalue())
    return out


def shard_labels(seed: int, split: str, shard: int, count: int, classes: int) -> np.ndarray:
    """Class indices of one shard's samples, depending only on (seed, split, shard)."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, shard])
    return rng.integers(0, classes, count)


def sample_template(jpg: bytes, cls: bytes) -> tuple[bytes, int, int, int]:
    """One sample's bytes with empty names, for patching: (bytes; the checksums of its jpg and cls
    headers without a name; where the cls data starts, from the sample's start). Samples with the
    same label differ only in their names and checksums."""
    jpg_h, cls_h = ustar_header(b"", len(jpg)), ustar_header(b"", len(cls))
    body = b"".join((jpg_h, jpg, _ZEROS[: -len(jpg) % TAR_BLOCK], cls_h, cls, _ZEROS[: -len(cls) % TAR_BLOCK]))
    cls_at = 2 * TAR_BLOCK + len(jpg) + (-len(jpg) % TAR_BLOCK)
    return body, int(jpg_h[148:154], 8), int(cls_h[148:154], 8), cls_at


def sample_templates(pool: list[bytes], classes: int) -> list[tuple]:
    """Per label: (sample_template(...), jpg size, cls size), the label's image from `pool`."""
    out = []
    for label in range(classes):
        jpg, cls = pool[label % len(pool)], b"%d" % label
        out.append((*sample_template(jpg, cls), len(jpg), len(cls)))
    return out


def shard_bytes(keys: list[str], labels: np.ndarray, templates: list[tuple]) -> tuple[bytes, str]:
    """(the tar's bytes, its v1.2 index text, as pipeline.shards.format_idx writes it) for samples
    `keys` with `labels`. Each sample is its label's template with the two names and checksums
    patched in; index lines are formatted here: several times faster than a TarInfo and a Member
    per file."""
    chunks, lines, pos = [], [f"{IDX_VERSION} {len(keys)}"], 0
    for key, label in zip(keys, labels.tolist()):
        body, jpg_sum, cls_sum, cls_at, jpg_size, cls_size = templates[label]
        name = key.encode()
        k, a, h = sum(name), len(name) + 4, cls_at - TAR_BLOCK  # a: name length; h: the cls header
        chunks += (name, b".jpg", body[a:148], b"%06o\0" % (jpg_sum + k + _JPG), body[155:h],
                   name, b".cls", body[h + a:h + 148], b"%06o\0" % (cls_sum + k + _CLS), body[h + 155:])
        lines.append(f"jpg {pos + TAR_BLOCK} {jpg_size} {key}.jpg cls {pos + cls_at} {cls_size} {key}.cls")
        pos += len(body)
    end = pos + 2 * TAR_BLOCK
    chunks.append(bytes(2 * TAR_BLOCK + (-end % RECORD)))  # end marker, padded to a record as tarfile does
    return b"".join(chunks), "\n".join(lines) + "\n"


_templates: list[tuple] = []  # per worker process, made once by _init


def _init(pool: list[bytes], classes: int) -> None:
    _templates[:] = sample_templates(pool, classes)


def write_shard(job: tuple) -> dict:
    """Pool worker: write one shard and its index (temp name, then rename); returns its record."""
    path, split, shard, start, count, seed = job
    labels = shard_labels(seed, split, shard, count, len(_templates))
    data, idx = shard_bytes([f"{split}_{start + i:08d}" for i in range(count)], labels, _templates)
    idx_final = str(idx_path(path))
    for final, payload in ((idx_final, idx.encode()), (path, data)):  # index first, tar last
        atomic_write(final, payload, durable=False)
    return {"file": os.path.basename(path), "count": count, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "idx_sha256": hashlib.sha256(idx.encode()).hexdigest()}


def plan(split: str, samples: int, shards: int) -> list[tuple[str, int, int, int]]:
    """(file name, shard index, first sample, count) of each shard: equal counts, +-1."""
    starts = [i * samples // shards for i in range(shards + 1)]
    return [(f"{PREFIX}-{split}-{i:06d}.tar", i, starts[i], starts[i + 1] - starts[i]) for i in range(shards)]


def make_tiny_shards(out: Path, samples: int, shards: int, classes: int = 1000, val_samples: int = 0,
                     size: int = 16, seed: int = 0, workers: int | None = None) -> dict:
    """Write the shards and `_info.json` into `out`; returns the manifest (as written)."""
    if not 1 <= shards <= samples:
        raise ValueError(f"--shards must be in 1..{samples} (--samples), got {shards}")
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_NAME).unlink(missing_ok=True)  # written last: never a manifest over a half-rewritten folder
    for stale in stale_temps(out):  # a killed run's temporary files
        stale.unlink()
    splits = {"train": (samples, shards)}
    if val_samples:
        splits["validation"] = (val_samples, min(val_samples, max(1, round(shards * val_samples / samples))))
    info = {"name": "imagenet-1k-tiny", "classes": make_wnids(classes), "num_classes": classes, "splits": {},
            "tool": {"name": "firehose make_tiny_shards", "args": {"samples": samples, "shards": shards,
                     "classes": classes, "val_samples": val_samples, "size": size, "seed": seed}}}
    workers = workers or os.cpu_count()
    with Pool(workers, initializer=_init, initargs=(jpeg_pool(size), classes)) as p:
        for split, (n, k) in splits.items():
            jobs = [(str(out / name), split, i, a, c, seed) for name, i, a, c in plan(split, n, k)]
            recs = p.map(write_shard, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
            info["splits"][split] = {
                "name": split, "num_samples": n, "filenames": [r["file"] for r in recs],
                "shard_lengths": [r["count"] for r in recs], "shard_bytes": [r["bytes"] for r in recs],
                "shard_sha256": [r["sha256"] for r in recs], "shard_idx_sha256": [r["idx_sha256"] for r in recs],
                "skipped": [], "reencoded": []}
    atomic_write(out / INFO_NAME, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode())
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--samples", type=int, required=True, help="train samples (ImageNet: 1281167)")
    p.add_argument("--shards", type=int, required=True, help="train shards")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--val-samples", type=int, default=0, help="validation samples (0 = no validation split)")
    p.add_argument("--size", type=int, default=16, help="image side, px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="writer processes")
    a = p.parse_args(argv)
    for k in ("samples", "shards", "classes", "size", "workers"):
        if getattr(a, k) <= 0:
            p.error(f"--{k.replace('_', '-')} must be positive")
    if a.val_samples < 0:
        p.error("--val-samples must be >= 0")
    t0 = time.perf_counter()
    try:
        info = make_tiny_shards(a.out, a.samples, a.shards, a.classes, a.val_samples, a.size, a.seed, a.workers)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gb = sum(b for s in info["splits"].values() for b in s["shard_bytes"]) / 1e9
    print(", ".join(f"{k}: {s['num_samples']} samples in {len(s['filenames'])} shards"
                    for k, s in info["splits"].items()) + f"; {gb:.2f} GB in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
