"""Write a small synthetic dataset in the real ImageNet folder layout.

Used by the demo and every test: train/<wnid>/<wnid>_<n>.JPEG, val/ (flat with
LOC_val_solution.csv, or class folders), LOC_synset_mapping.txt and, optionally, the
original archive tars and the odd files real ImageNet and real disks contain.

The images come from tools/synthetic_images.py. Output is byte-identical for a given seed
whatever the worker count: each image has its own RNG seeded from (seed, split, class, index).

    python tools/make_synthetic_imagenet.py --out /tmp/fake_imagenet --oddities --archives
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tools.synthetic_images import ImageSpec, class_name, keyed_image

ODDITY_KINDS = ("cmyk", "gray", "png", "truncated", "empty")
SPLIT_IDS = {"train": 0, "val": 1, "odd": 2}
VAL_LAYOUTS = ("flat", "folders")


@dataclass(frozen=True)
class DatasetSpec:
    """What make_dataset writes: `classes` classes of `train_per_class` train and `val_per_class`
    val images drawn as `images` says from `seed`; val/ flat (with LOC_val_solution.csv) or in
    class folders (`val_layout`); with the odd files (`oddities`) and the original archive tars
    (`archives`) or without. Raises ValueError on a bad value."""

    classes: int = 10
    train_per_class: int = 20
    val_per_class: int = 5
    seed: int = 0
    val_layout: str = "flat"
    oddities: bool = False
    archives: bool = False
    images: ImageSpec = field(default_factory=ImageSpec)

    def __post_init__(self):
        if self.val_layout not in VAL_LAYOUTS:
            raise ValueError(f"val_layout must be 'flat' or 'folders', got {self.val_layout!r}")
        if self.train_per_class < 1 or self.val_per_class < 0:
            raise ValueError("train_per_class must be >= 1 and val_per_class >= 0")


@dataclass(frozen=True)
class SyntheticDataset:
    """What make_dataset wrote. Paths are absolute; oddities are (path relative to root, kind)."""

    root: Path
    wnids: tuple[str, ...]  # sorted; index = class label
    n_train: int  # normal train images, oddities not counted
    n_val: int
    val_wnids: tuple[str, ...]  # val_wnids[i] is the class of ILSVRC2012_val_{i+1:08d}
    oddities: tuple[tuple[str, str], ...]
    archives: tuple[Path, ...]  # (train tar, val tar) or ()
    total_bytes: int
    seconds: float


def make_wnids(classes: int) -> list[str]:
    """Return `classes` wnids shaped like real ones ('n' + 8 digits); sorted order = label order."""
    if not 1 <= classes <= 9999:
        raise ValueError(f"classes must be in 1..9999, got {classes}")
    return [f"n0144{i:04d}" for i in range(classes)]


def oddity_paths(wnids: list[str], train_per_class: int) -> list[tuple[str, str]]:
    """Return [(relative path, kind)] of the --oddities files, one per ODDITY_KINDS entry.

    Oddity i goes to class i % classes under the next unused index, so the normal images
    keep their names and bytes whether or not oddities are written.
    """
    n = len(wnids)
    return [(f"train/{wnids[i % n]}/{wnids[i % n]}_{train_per_class + i // n}.JPEG", kind)
            for i, kind in enumerate(ODDITY_KINDS)]


def _write_one(job: tuple[str, int, tuple[int, ...], ImageSpec]) -> tuple[int, int]:
    """Worker: render, JPEG-encode and write one image; return its (width, height) in pixels."""
    path, c, key, spec = job
    image, quality = keyed_image(c, key, spec)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    Path(path).write_bytes(buf.getvalue())
    return image.size


def _write_oddity(path: Path, kind: str, c: int, key: tuple[int, ...], spec: ImageSpec) -> None:
    """Write one odd file of `kind` (see ODDITY_KINDS) showing class c where it has pixels."""
    buf = io.BytesIO()
    if kind != "empty":
        image, quality = keyed_image(c, key, spec)
        if kind == "png":
            image.save(buf, "PNG")
        else:
            image.convert({"cmyk": "CMYK", "gray": "L"}.get(kind, "RGB")).save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else data)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """A tar member header with every varying field pinned, for byte-identical archives."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
    return info


def _write_tar(fileobj, members: list[tuple[str, bytes]]) -> int:
    """Write an uncompressed USTAR tar of (name, bytes) members, sorted by name; return its bytes."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(members):
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    return fileobj.tell()


def _write_archives(root: Path, wnids: list[str]) -> tuple[Path, Path]:
    """Write archives/ILSVRC2012_img_{train,val}.tar from the files already under root.

    The train tar holds one <wnid>.tar per class, each with flat <wnid>_<n>.JPEG members,
    as the real one does; the val tar is flat. Same bytes as the folder files.
    """
    (root / "archives").mkdir()
    train_tar = root / "archives" / "ILSVRC2012_img_train.tar"
    val_tar = root / "archives" / "ILSVRC2012_img_val.tar"
    with train_tar.open("wb") as f, tarfile.open(fileobj=f, mode="w",
                                                  format=tarfile.USTAR_FORMAT) as outer:
        for wnid in wnids:  # one class in memory at a time
            inner = io.BytesIO()
            size = _write_tar(inner, [(p.name, p.read_bytes()) for p in (root / "train" / wnid).iterdir()])
            outer.addfile(_tarinfo(f"{wnid}.tar", size), io.BytesIO(inner.getvalue()))
    with val_tar.open("wb") as f:
        _write_tar(f, [(p.name, p.read_bytes()) for p in (root / "val").rglob("*.JPEG")])
    return train_tar, val_tar


def _check_out(out: Path, force: bool) -> None:
    """Refuse a non-empty OUT (FileExistsError naming it) unless force, which deletes it."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not force:
        raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")
    shutil.rmtree(out) if out.is_dir() else out.unlink()


def _plan(tmp: Path, wnids: list[str], spec: DatasetSpec) -> tuple[list, list[str]]:
    """Make the folders and list one job per image; return (jobs, wnid of each val image)."""
    jobs, seed = [], spec.seed
    for c, wnid in enumerate(wnids):
        (tmp / "train" / wnid).mkdir(parents=True)
        jobs += [(str(tmp / "train" / wnid / f"{wnid}_{i}.JPEG"), c, (seed, SPLIT_IDS["train"], c, i),
                  spec.images) for i in range(spec.train_per_class)]
    # Real val numbering is shuffled across classes; a seeded permutation does the same.
    pairs = [(c, i) for c in range(len(wnids)) for i in range(spec.val_per_class)]
    val_wnids = []
    for k, j in enumerate(np.random.default_rng((seed, 3)).permutation(len(pairs)), start=1):
        c, i = pairs[j]
        folder = tmp / "val" / (wnids[c] if spec.val_layout == "folders" else "")
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"ILSVRC2012_val_{k:08d}.JPEG"), c, (seed, SPLIT_IDS["val"], c, i), spec.images))
        val_wnids.append(wnids[c])
    return jobs, val_wnids


def make_dataset(out, spec: DatasetSpec = DatasetSpec(), workers: int | None = None,
                 force: bool = False) -> SyntheticDataset:
    """Write the dataset `spec` describes to `out` and return what was written.

    workers=None means os.cpu_count(). All is built in a sibling `<out>.partial-<pid>` folder,
    then renamed, so `out` is never half-written. Raises FileExistsError if `out` is non-empty
    and not force, ValueError on a bad number of classes.
    """
    start, out = time.perf_counter(), Path(out).absolute()
    wnids = make_wnids(spec.classes)
    _check_out(out, force)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        jobs, val_wnids = _plan(tmp, wnids, spec)
        val_sizes = _run_jobs(jobs, workers)[len(jobs) - len(val_wnids):]
        boxes = enumerate(zip(val_wnids, val_sizes, strict=True), start=1)  # whole-image box
        rows = "".join(f"ILSVRC2012_val_{k:08d},{w} 0 0 {x - 1} {y - 1}\n" for k, (w, (x, y)) in boxes)
        (tmp / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + rows)
        names = "".join(f"{w} {class_name(c)}\n" for c, w in enumerate(wnids))
        (tmp / "LOC_synset_mapping.txt").write_text(names)
        odd = oddity_paths(wnids, spec.train_per_class) if spec.oddities else []
        for i, (rel, kind) in enumerate(odd):
            c = i % spec.classes
            _write_oddity(tmp / rel, kind, c, (spec.seed, SPLIT_IDS["odd"], c, i), spec.images)
        tars = _write_archives(tmp, wnids) if spec.archives else ()
        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SyntheticDataset(
        root=out, wnids=tuple(wnids), n_train=spec.classes * spec.train_per_class, n_val=len(val_wnids),
        val_wnids=tuple(val_wnids), oddities=tuple(odd),
        archives=tuple(out / t.relative_to(tmp) for t in tars), total_bytes=total,
        seconds=time.perf_counter() - start)


def _run_jobs(jobs: list, workers: int | None) -> list[tuple[int, int]]:
    """Run _write_one over jobs, in-process or on `workers` processes; (w, h) in job order."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    bar = dict(total=len(jobs), unit="img", disable=None)  # disable=None: no bar off a tty
    if workers <= 1 or len(jobs) < 64:  # a pool costs more than it saves on tiny runs
        return [_write_one(j) for j in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // (workers * 16))), **bar))


def _quality_range(text: str) -> tuple[int, int]:
    """Parse 'LO,HI' for argparse."""
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI integers, got {text!r}") from None
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (2 on bad input)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (must be absent or empty)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=20)
    ap.add_argument("--val-per-class", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-side", type=int, default=120, help="pixels")
    ap.add_argument("--max-side", type=int, default=640, help="pixels")
    ap.add_argument("--quality-range", type=_quality_range, default=(70, 95), help="JPEG quality LO,HI")
    ap.add_argument("--val-layout", choices=VAL_LAYOUTS, default="flat")
    ap.add_argument("--oddities", action="store_true", help="add CMYK/gray/PNG/truncated/empty train files")
    ap.add_argument("--archives", action="store_true", help="also write the original tars")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--realistic", action="store_true", help="ImageNet-like ~500x375 q90 ~110 KB images")
    ap.add_argument("--force", action="store_true", help="delete a non-empty --out first")
    args = ap.parse_args(argv)
    try:
        images = ImageSpec(min_side=args.min_side, max_side=args.max_side, quality_range=args.quality_range,
                           realistic=args.realistic)
        spec = DatasetSpec(classes=args.classes, train_per_class=args.train_per_class,
                           val_per_class=args.val_per_class, seed=args.seed, val_layout=args.val_layout,
                           oddities=args.oddities, archives=args.archives, images=images)
        ds = make_dataset(args.out, spec, workers=args.workers, force=args.force)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {ds.n_train} train + {ds.n_val} val images, {len(ds.wnids)} classes, "
          f"{len(ds.oddities)} oddities, {len(ds.archives)} archives, "
          f"{ds.total_bytes / 1e6:.1f} MB in {ds.seconds:.1f} s to {ds.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
