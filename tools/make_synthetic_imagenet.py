"""Write a small synthetic dataset in the real ImageNet folder layout.

Used by the demo and every test: train/<wnid>/<wnid>_<n>.JPEG, val/ (flat with
LOC_val_solution.csv, or class folders), LOC_synset_mapping.txt and, optionally, the
original archive tars and the odd files real ImageNet and real disks contain.

Each class is one family of pattern (shape x hue x texture frequency); every image draws
its own position, scale, rotation, clutter, noise, size and JPEG quality, so a small CNN
can learn the classes but not by a trivial cue. Output is byte-identical for a given seed
whatever the worker count: each image has its own RNG seeded from (seed, split, class, index).

    python tools/make_synthetic_imagenet.py --out /tmp/fake_imagenet --oddities --archives
"""
from __future__ import annotations

import argparse
import colorsys
import io
import os
import shutil
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

SHAPES = ("circle", "square", "triangle", "stripes", "checker", "rings", "cross", "diamond")
TEXTURES = {"plain": 0.0, "coarse": 1.5, "fine": 4.0}  # name: stripe cycles per object radius
HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue",
             "violet", "magenta", "rose")
ODDITY_KINDS = ("cmyk", "gray", "png", "truncated", "empty")
SPLIT_IDS = {"train": 0, "val": 1, "odd": 2}
REALISTIC_QUALITY = 90
REALISTIC_NOISE = (0.09, 0.13)  # luma noise std, of full scale: tuned so 500x375 q90 is ~110 KB


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


def class_style(c: int) -> tuple[int, float, int]:
    """Return (shape index, hue in [0,1), texture index) for class c.

    (shape, texture) pairs are distinct for c < 24 (8 x 3, coprime cycles); hue steps by the
    golden ratio so neighbouring classes never share a colour.
    """
    return c % len(SHAPES), (c * 0.381966) % 1.0, c % len(TEXTURES)


def class_name(c: int) -> str:
    """Human-readable class name for LOC_synset_mapping.txt, e.g. 'red circle, plain'."""
    shape, hue, tex = class_style(c)
    return f"{HUE_NAMES[int(hue * 12 + 0.5) % 12]} {SHAPES[shape]}, {list(TEXTURES)[tex]}"


def oddity_paths(wnids: list[str], train_per_class: int) -> list[tuple[str, str]]:
    """Return [(relative path, kind)] of the --oddities files, one per ODDITY_KINDS entry.

    Oddity i goes to class i % classes under the next unused index, so the normal images
    keep their names and bytes whether or not oddities are written.
    """
    n = len(wnids)
    return [(f"train/{wnids[i % n]}/{wnids[i % n]}_{train_per_class + i // n}.JPEG", kind)
            for i, kind in enumerate(ODDITY_KINDS)]


def _image_size(rng: np.random.Generator, min_side: int, max_side: int,
                realistic: bool) -> tuple[int, int]:
    """Draw (width, height) in pixels: ImageNet-like 500x375 mostly, or anything in range."""
    if realistic:
        long = 500 if rng.random() < 0.8 else int(rng.integers(400, 501))
        aspect = 4 / 3 if rng.random() < 0.75 else rng.uniform(1.0, 1.6)
    else:
        long = int(rng.integers(min_side, max_side + 1))
        aspect = rng.uniform(1.0, 1.6)
    short = int(round(long / aspect)) if realistic else max(min_side, int(round(long / aspect)))
    return (long, short) if rng.random() < 0.7 else (short, long)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of SHAPES[shape] in object coordinates (u, v; object radius 1)."""
    r, box, s3 = np.hypot(u, v), np.maximum(np.abs(u), np.abs(v)), np.sqrt(3.0)
    masks = {  # lambdas, so only the one asked for is computed
        "circle": lambda: r < 1,
        "square": lambda: box < 0.8,
        "triangle": lambda: (v > -0.5) & (s3 * u + v < 1) & (-s3 * u + v < 1),
        "stripes": lambda: (np.sin(2.5 * np.pi * u) > 0) & (box < 1),
        "checker": lambda: (np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v) > 0) & (box < 0.9),
        "rings": lambda: (np.sin(3 * np.pi * r) > 0) & (r < 1),
        "cross": lambda: ((np.abs(u) < 0.3) | (np.abs(v) < 0.3)) & (box < 1),
        "diamond": lambda: np.abs(u) + np.abs(v) < 1,
    }
    return masks[SHAPES[shape]]()


def render(c: int, rng: np.random.Generator, width: int, height: int,
           realistic: bool = False) -> np.ndarray:
    """Render one image of class c as a uint8 array (height, width, 3)."""
    shape, hue, tex = class_style(c)
    side = min(width, height)
    # Background clutter: a coarse random colour field, smoothly upsampled.
    grid = rng.uniform(0.15, 0.85, (4, 4, 3)) * rng.uniform(0.5, 1.0, (1, 1, 3))
    img = np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize(
        (width, height), Image.BILINEAR), dtype=np.float32) * np.float32(1 / 255)
    # A few faint random blobs of any hue, so colour alone is not the whole story.
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, rad = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.2) * side
        ys, xs = _window(cy, rad, height), _window(cx, rad, width)
        yy, xx = np.ogrid[ys, xs]
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < rad * rad)[..., None]
        img[ys, xs] = np.where(blob, 0.6 * img[ys, xs] + 0.4 * rng.uniform(0, 1, 3).astype(np.float32),
                               img[ys, xs])
    # The class object: random centre, scale and rotation, class hue with a little jitter.
    radius = rng.uniform(0.25, 0.45) * side
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    theta, phase = rng.uniform(0, 2 * np.pi, 2)
    rgb = colorsys.hsv_to_rgb((hue + rng.normal(0, 0.02)) % 1.0, rng.uniform(0.65, 1.0),
                              rng.uniform(0.7, 1.0))
    ys, xs = _window(cy, 1.5 * radius, height), _window(cx, 1.5 * radius, width)  # holds r < 1.5
    yy, xx = np.ogrid[ys, xs]
    dx, dy = (xx.astype(np.float32) - cx) / radius, (yy.astype(np.float32) - cy) / radius
    u, v = np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy
    texture = 0.5 + 0.5 * np.cos(2 * np.pi * list(TEXTURES.values())[tex] * (u + 0.5 * v) + phase)
    fg = np.asarray(rgb, np.float32) * (0.55 + 0.45 * texture)[..., None]
    img[ys, xs] = np.where(_shape_mask(shape, u, v)[..., None], fg, img[ys, xs])
    # Pixel noise: real photos carry fine detail, which is what makes a 500x375 q90 JPEG ~110 KB.
    sigma = rng.uniform(*(REALISTIC_NOISE if realistic else (0.0, 0.05)))
    img += np.float32(sigma) * rng.standard_normal((height, width, 1), dtype=np.float32)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.int16)
    chroma = 8 if realistic else 4
    out += rng.integers(-chroma, chroma + 1, out.shape, dtype=np.int16)  # colour noise, cheaply
    return np.clip(out, 0, 255).astype(np.uint8)


def _window(centre: float, half: float, size: int) -> slice:
    """Pixel slice [centre - half, centre + half] clipped to [0, size)."""
    return slice(max(0, int(centre - half)), min(size, int(centre + half) + 2))


def _render_keyed(c: int, key: tuple[int, ...], params: dict) -> tuple[Image.Image, int]:
    """Render the image keyed by (seed, split, class, index); return (PIL RGB image, quality)."""
    rng = np.random.default_rng(key)
    width, height = _image_size(rng, params["min_side"], params["max_side"], params["realistic"])
    lo, hi = params["quality_range"]
    quality = REALISTIC_QUALITY if params["realistic"] else int(rng.integers(lo, hi + 1))
    return Image.fromarray(render(c, rng, width, height, params["realistic"])), quality


def _write_one(job: tuple[str, int, tuple[int, ...], dict]) -> tuple[int, int]:
    """Worker: render, JPEG-encode and write one image; return its (width, height) in pixels."""
    path, c, key, params = job
    image, quality = _render_keyed(c, key, params)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    Path(path).write_bytes(buf.getvalue())
    return image.size


def _write_oddity(path: Path, kind: str, c: int, key: tuple[int, ...], params: dict) -> None:
    """Write one odd file of `kind` (see ODDITY_KINDS) showing class c where it has pixels."""
    buf = io.BytesIO()
    if kind != "empty":
        image, quality = _render_keyed(c, key, params)
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


def _plan(tmp: Path, wnids: list[str], train_per_class: int, val_per_class: int, seed: int,
          val_layout: str, params: dict) -> tuple[list, list[str]]:
    """Make the folders and list one job per image; return (jobs, wnid of each val image)."""
    jobs = []
    for c, wnid in enumerate(wnids):
        (tmp / "train" / wnid).mkdir(parents=True)
        jobs += [(str(tmp / "train" / wnid / f"{wnid}_{i}.JPEG"), c, (seed, SPLIT_IDS["train"], c, i),
                  params) for i in range(train_per_class)]
    # Real val numbering is shuffled across classes; a seeded permutation does the same.
    pairs = [(c, i) for c in range(len(wnids)) for i in range(val_per_class)]
    val_wnids = []
    for k, j in enumerate(np.random.default_rng((seed, 3)).permutation(len(pairs)), start=1):
        c, i = pairs[j]
        folder = tmp / "val" / (wnids[c] if val_layout == "folders" else "")
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"ILSVRC2012_val_{k:08d}.JPEG"), c, (seed, SPLIT_IDS["val"], c, i), params))
        val_wnids.append(wnids[c])
    return jobs, val_wnids


def make_dataset(out, classes: int = 10, train_per_class: int = 20, val_per_class: int = 5,
                 seed: int = 0, min_side: int = 120, max_side: int = 640,
                 quality_range: tuple[int, int] = (70, 95), val_layout: str = "flat",
                 oddities: bool = False, archives: bool = False, realistic: bool = False,
                 workers: int | None = None, force: bool = False) -> SyntheticDataset:
    """Write the dataset to `out` and return what was written.

    Sides are in pixels (min_side..max_side; ignored when realistic: ~500x375); quality_range
    is the JPEG quality range (realistic uses 90). workers=None means os.cpu_count(). All is
    built in a sibling `<out>.partial-<pid>` folder, then renamed, so `out` is never half-written.
    Raises FileExistsError if `out` is non-empty and not force, ValueError on bad arguments.
    """
    lo, hi = quality_range
    if val_layout not in ("flat", "folders"):
        raise ValueError(f"val_layout must be 'flat' or 'folders', got {val_layout!r}")
    if not (1 <= lo <= hi <= 100 and 16 <= min_side <= max_side):
        raise ValueError(f"bad quality range {lo},{hi} or sides {min_side}..{max_side}")
    if train_per_class < 1 or val_per_class < 0:
        raise ValueError("train_per_class must be >= 1 and val_per_class >= 0")
    start, out = time.perf_counter(), Path(out).absolute()
    wnids = make_wnids(classes)
    _check_out(out, force)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    params = dict(min_side=min_side, max_side=max_side, quality_range=(lo, hi), realistic=realistic)
    try:
        jobs, val_wnids = _plan(tmp, wnids, train_per_class, val_per_class, seed, val_layout, params)
        val_sizes = _run_jobs(jobs, workers)[len(jobs) - len(val_wnids):]
        boxes = enumerate(zip(val_wnids, val_sizes, strict=True), start=1)  # whole-image box
        rows = "".join(f"ILSVRC2012_val_{k:08d},{w} 0 0 {x - 1} {y - 1}\n" for k, (w, (x, y)) in boxes)
        (tmp / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + rows)
        names = "".join(f"{w} {class_name(c)}\n" for c, w in enumerate(wnids))
        (tmp / "LOC_synset_mapping.txt").write_text(names)
        odd = oddity_paths(wnids, train_per_class) if oddities else []
        for i, (rel, kind) in enumerate(odd):
            _write_oddity(tmp / rel, kind, i % classes, (seed, SPLIT_IDS["odd"], i % classes, i), params)
        tars = _write_archives(tmp, wnids) if archives else ()
        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SyntheticDataset(
        root=out, wnids=tuple(wnids), n_train=classes * train_per_class, n_val=len(val_wnids),
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
    ap.add_argument("--val-layout", choices=("flat", "folders"), default="flat")
    ap.add_argument("--oddities", action="store_true", help="add CMYK/gray/PNG/truncated/empty train files")
    ap.add_argument("--archives", action="store_true", help="also write the original tars")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--realistic", action="store_true", help="ImageNet-like ~500x375 q90 ~110 KB images")
    ap.add_argument("--force", action="store_true", help="delete a non-empty --out first")
    args = ap.parse_args(argv)
    try:
        ds = make_dataset(
            args.out, classes=args.classes, train_per_class=args.train_per_class,
            val_per_class=args.val_per_class, seed=args.seed, min_side=args.min_side,
            max_side=args.max_side, quality_range=args.quality_range, val_layout=args.val_layout,
            oddities=args.oddities, archives=args.archives, realistic=args.realistic,
            workers=args.workers, force=args.force)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {ds.n_train} train + {ds.n_val} val images, {len(ds.wnids)} classes, "
          f"{len(ds.oddities)} oddities, {len(ds.archives)} archives, "
          f"{ds.total_bytes / 1e6:.1f} MB in {ds.seconds:.1f} s to {ds.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
