"""Writing one shard: image hygiene, the tar, and its DALI index in the same pass.

A shard is the unit of work and of resume: written atomically (pipeline/atomic.py), index first,
tar last, so a final `.tar` name always means a complete shard with its index. A failed write
(disk full, read-only output) leaves no temporary file and raises OSError naming the shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass

from PIL import Image

from pipeline.atomic import atomic_file, atomic_write
from pipeline.shards import TAR_BLOCK, Member, format_idx, idx_path

RECORD = 20 * TAR_BLOCK  # tar pads the archive to a whole record (GNU/Python default)
Image.MAX_IMAGE_PIXELS = None  # ImageNet has a few very large photos; they are trusted source data


class BadImage(ValueError):
    """An image that cannot go into a shard; the message is the reason."""


@dataclass(frozen=True)
class ImageOptions:
    check: str = "decode"  # "decode": full decode; "header": header + end-of-image marker only
    max_side: int | None = None  # re-encode images whose long side exceeds this (px)
    quality: int = 90  # JPEG quality of re-encoded images


def prepare_image(data: bytes, opt: ImageOptions) -> tuple[bytes, int, int, str]:
    """Check one image; returns (jpeg bytes, width, height, note) with note "" (original bytes
    kept) or why it was re-encoded. Raises BadImage for empty, truncated or undecodable files."""
    if not data:
        raise BadImage("empty file")
    try:
        im = Image.open(io.BytesIO(data))
        fmt, mode, (w, h) = im.format, im.mode, im.size
        note = ""
        if fmt != "JPEG":
            note = f"{fmt} re-encoded as JPEG"
        elif mode != "RGB":
            note = f"{mode} JPEG re-encoded as RGB"
        elif opt.max_side and max(w, h) > opt.max_side:
            note = f"resized to max side {opt.max_side}"
        if note or opt.check == "decode":
            im.load()  # full decode: raises on truncated or corrupt data
        elif data.rfind(b"\xff\xd9", -64) < 0:
            raise BadImage("truncated JPEG (no end-of-image marker)")
        if not note:
            return data, w, h, ""
        im = im.convert("RGB")
        if opt.max_side and max(w, h) > opt.max_side:
            s = opt.max_side / max(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=opt.quality)
        return out.getvalue(), im.width, im.height, note
    except BadImage:
        raise
    except Exception as e:  # PIL raises many types for bad data (OSError, SyntaxError, ...)
        raise BadImage(f"undecodable image ({type(e).__name__}: {e})") from None


class TarIndexWriter:
    """A deterministic ustar writer that records each member's data offset for the DALI index
    and hashes every byte it writes (sha256), so no second pass over the shard is needed."""

    def __init__(self, f):
        self.f, self.pos, self.sha = f, 0, hashlib.sha256()
        self.samples: list[list[Member]] = []

    def _write(self, b: bytes) -> None:
        self.f.write(b)
        self.sha.update(b)
        self.pos += len(b)

    def add_sample(self, key: str, files: list[tuple[str, bytes]]) -> None:
        members = []
        for ext, data in files:
            ti = tarfile.TarInfo(f"{key}.{ext}")
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o644, "", ""
            self._write(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
            members.append(Member(ti.name, self.pos, len(data)))
            self._write(data)
            self._write(b"\0" * (-len(data) % TAR_BLOCK))  # apart: no copy of the image bytes
        self.samples.append(members)

    def close(self) -> None:
        end = self.pos + 2 * TAR_BLOCK
        self._write(b"\0" * (2 * TAR_BLOCK + (-end % RECORD)))


def write_shard(tar_path: str, samples, labels: dict[str, int], opt: ImageOptions) -> dict:
    """Write `samples` (tools.imagenet_sources.Sample) to `tar_path` + its index, atomically.

    Returns the shard's manifest record: file, count, bytes, sha256 of the tar and of the index
    (idx_sha256), skipped and re-encoded files.
    """
    skipped, reencoded = [], []
    with atomic_file(tar_path) as f:  # the commit point: a final .tar name means a complete shard
        w = TarIndexWriter(f)
        for s in samples:
            try:
                jpg, width, height, note = prepare_image(s.read(), opt)
            except BadImage as e:
                skipped.append({"file": s.name, "reason": str(e)})
                continue
            if note:
                reencoded.append({"file": s.name, "reason": note})
            meta = {"wnid": s.wnid, "filename": s.name, "width": width, "height": height}
            w.add_sample(s.key, [("jpg", jpg), ("cls", str(labels[s.wnid]).encode()),
                                 ("json", json.dumps(meta, sort_keys=True).encode())])
        w.close()
        index = format_idx(w.samples).encode()
        atomic_write(idx_path(tar_path), index)  # the index before the tar
    return {"file": os.path.basename(tar_path), "count": len(w.samples), "bytes": w.pos,
            "sha256": w.sha.hexdigest(), "idx_sha256": hashlib.sha256(index).hexdigest(),
            "skipped": skipped, "reencoded": reencoded}
