"""Where the CPU input pipeline's time goes, and what each lever buys, per CPU-second.

    python -m benchmarks.cpu_levers --data SHARDS [--threads 1,2] [--image-sizes 224,160]
        [--batch-size 64] [--steps 8] [--repeats 3] [--psnr-images 32] [--json FILE]

DALI on the CPU, cut after each stage of its training graph (pipeline/dali_graph.py): read, full
decode, random-crop decode, + resize (each filter choice), the train stage handing over float16
(normalized by DALI) or uint8, and the fused alternative (full decode + fn.random_resized_crop).
The baseline's transform (pipeline/baseline.py TrainTransform) in this one process on in-memory
JPEGs: full decode, crop + resize handing over uint8 (with and without the scaled decode,
pipeline/pil_decode.py), and float16. The device normalize (pipeline/normalize.py) timed on the CPU.

Every figure is img/s and img/s per CPU-second of this process (time.process_time, which counts
DALI's worker threads), the median of `--repeats` windows of `--steps` batches. The resize
filters' image quality is the PSNR (dB) of DALI's resize of fixed crop boxes of full decodes
against a float reference of the same boxes (PIL's antialiased bilinear, i.e. triangle, filter on
float32 planes), and the scaled decode's share of crops at each size on the data's own image sizes.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tarfile
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from benchmarks.common import one_line_errors, write_json
from pipeline.augment import random_resized_crop_box
from pipeline.baseline import TrainTransform
from pipeline.config import OUTPUTS, DataConfig
from pipeline.loader import build_loader
from pipeline.normalize import normalize_hwc
from pipeline.pil_decode import draft_reduction, resized_random_crop
from pipeline.shards import ShardError, load_split

CPU = torch.device("cpu")
# DALI resize choices: (interp_type name, antialias). The first is the training graph's.
FILTERS = (("INTERP_LINEAR", True), ("INTERP_LINEAR", False), ("INTERP_TRIANGULAR", False),
           ("INTERP_CUBIC", True), ("INTERP_CUBIC", False), ("INTERP_NN", False))


def windows(run: Callable[[], int], warmup: int, steps: int, repeats: int) -> dict:
    """img/s and img per CPU-second of `run()` (one batch, returns its images): medians of
    `repeats` windows of `steps` batches after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    wall, cpu = [], []
    for _ in range(repeats):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        for _ in range(steps):
            n += run()
        wall.append(n / (time.perf_counter() - t0))
        cpu.append(n / max(time.process_time() - c0, 1e-9))
    return {"img_per_s": statistics.median(wall), "img_per_cpu_s": statistics.median(cpu),
            "repeats_img_per_cpu_s": cpu}


# --- DALI -------------------------------------------------------------------------------------------

def dali_variants(size: int, min_area: float) -> dict[str, list]:
    """Name -> the stages of a DALI CPU graph cut or varied for one figure."""
    from nvidia.dali import fn, types

    from pipeline import dali_graph as g

    dec = g.Decoder(None)
    crop = g.decode_random_crop(dec, min_area)

    def resize(interp: str, aa: bool):
        return lambda x: fn.resize(x, resize_x=size, resize_y=size, interp_type=getattr(types, interp), antialias=aa)

    def fused(x):
        return fn.random_resized_crop(x, size=[size, size], random_area=[min_area, 1.0], antialias=True)

    out = {"read": [], "decode": [g.decode(dec)], "crop_decode": [crop]}
    for interp, aa in FILTERS:
        out[f"crop_decode+resize:{interp.removeprefix('INTERP_').lower()}{'+aa' if aa else ''}"] = \
            [crop, resize(interp, aa)]
    for output in OUTPUTS:  # the training graph itself, handing over each output
        out[f"train_{output}"] = g.train_stages(DataConfig(min_area=min_area, output=output), size, dec)
    out["fused_decode+random_resized_crop+aa"] = [g.decode(dec), fused]
    return out


QUICK = ("decode", "crop_decode", "crop_decode+resize:linear+aa", "train_float16", "train_uint8")


def measure_dali(args, data: str, size: int, threads: int) -> dict:
    cfg = DataConfig(path=data, loader="dali", batch_size=args.batch_size, image_size=size, num_threads=threads,
                     shuffle_buffer=256, seed=1)
    loader = build_loader(cfg, "train", 0, 1, CPU)
    out = {}
    for name, stages in dali_variants(size, cfg.min_area).items():
        if args.quick and name not in QUICK:
            continue
        pipe = loader.build(0, size, stages=stages)
        out[name] = windows(lambda p=pipe: len(p.run()[1]), args.warmup, args.steps, args.repeats)
        del pipe
        print(f"dali t={threads} {size}px {name:40s} {out[name]['img_per_s']:7.1f} img/s "
              f"{out[name]['img_per_cpu_s']:7.1f} img/cpu-s", flush=True)
    return out


# --- the baseline's transform, in this process --------------------------------------------------

def jpegs(data: str, count: int) -> list[bytes]:
    """The first `count` JPEGs of the train split's shards, in memory."""
    out = []
    for tar in load_split(data, "train").files:
        with tarfile.open(tar) as tf:
            out += [tf.extractfile(m).read() for m in tf if m.name.endswith(".jpg")]
        if len(out) >= count:
            break
    return out[:count]


def measure_baseline(args, images: list[bytes], size: int) -> dict:
    batch = args.batch_size
    rng = random.Random(0)
    pos = [0]

    def samples():
        i = pos[0]
        pos[0] = (i + batch) % len(images)
        return [{"jpg": images[(i + k) % len(images)], "__key__": str(k), "__url__": "mem"} for k in range(batch)]

    def transform_batch(t):
        return lambda: len([t(s, rng) for s in samples()])

    def full_decode():
        return len([Image.open(io.BytesIO(s["jpg"])).convert("RGB") for s in samples()])

    variants = {"decode": full_decode,
                "train_uint8": transform_batch(TrainTransform(size, 0.08, draft=False)),
                "train_uint8+draft": transform_batch(TrainTransform(size, 0.08, draft=True)),
                "train_float16": transform_batch(TrainTransform(size, 0.08, normalize=True, draft=False))}
    out = {}
    for name, run in variants.items():
        out[name] = windows(run, args.warmup, args.steps, args.repeats)
        print(f"baseline  {size}px {name:40s} {out[name]['img_per_s']:7.1f} img/s "
              f"{out[name]['img_per_cpu_s']:7.1f} img/cpu-s", flush=True)
    return out


def measure_normalize(args, size: int) -> dict:
    """The device normalize of a uint8 batch, run on the CPU (one torch thread)."""
    x = torch.randint(0, 256, (args.batch_size, size, size, 3), dtype=torch.uint8)
    return windows(lambda: len(normalize_hwc(x)), args.warmup, args.steps, args.repeats)


def draft_share(images: list[bytes], size: int, min_area: float, draws: int = 4000) -> float:
    """Share of RandomResizedCrop boxes (over the images' own sizes) the scaled decode applies to."""
    sizes = [Image.open(io.BytesIO(b)).size for b in images]
    rng = random.Random(0)
    hits = 0
    for i in range(draws):
        x0, y0, x1, y1 = random_resized_crop_box(*sizes[i % len(sizes)], rng, min_area)
        hits += draft_reduction(x1 - x0, y1 - y0, size) > 1
    return hits / draws


# --- image quality of the resize choices ----------------------------------------------------------

def reference_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The float reference: PIL's antialiased bilinear (triangle) filter on float32 planes."""
    planes = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), "F").resize(
        (size, size), Image.Resampling.BILINEAR, box=box)) for c in range(3)]
    return np.stack(planes, -1)


def psnr(a: np.ndarray, ref: np.ndarray) -> float:
    err = float(np.mean((a.astype(np.float64) - np.clip(ref, 0, 255)) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(255**2 / err)


def dali_roi_resize(images: list[np.ndarray], boxes: list, size: int, interp: str, aa: bool) -> list[np.ndarray]:
    """DALI's CPU resize of each image's box (PIL order: left, top, right, bottom) to size x size."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None, seed=0)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        start = fn.external_source(source=lambda: [np.float32([b[1], b[0]]) for b in boxes], batch=True)  # (y, x)
        end = fn.external_source(source=lambda: [np.float32([b[3], b[2]]) for b in boxes], batch=True)
        return fn.resize(x, resize_x=size, resize_y=size, roi_start=start, roi_end=end,
                         interp_type=getattr(types, interp), antialias=aa)

    p = pipe()
    p.build()
    out = p.run()[0]
    return [np.asarray(out[i]) for i in range(len(images))]


def resize_quality(images: list[bytes], size: int, min_area: float) -> dict:
    """PSNR (dB) against the float reference of the same random crop boxes, mean over images: each
    DALI filter choice; PIL's uint8 resize; and, over the crops the scaled decode applies to, PIL
    with and without it."""
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]
    seeds = range(len(images))  # resized_random_crop draws its box from Random(seed): the same box here
    boxes = [random_resized_crop_box(im.shape[1], im.shape[0], random.Random(i), min_area)
             for i, im in zip(seeds, decoded)]
    refs = [reference_resize(im, box, size) for im, box in zip(decoded, boxes)]
    out = {}
    for interp, aa in FILTERS:
        resized = dali_roi_resize(decoded, boxes, size, interp, aa)
        out[f"dali:{interp.removeprefix('INTERP_').lower()}{'+aa' if aa else ''}"] = \
            statistics.mean(psnr(r, ref) for r, ref in zip(resized, refs))
    pil = [np.asarray(resized_random_crop(b, size, min_area, random.Random(i), draft=False))
           for i, b in zip(seeds, images)]
    out["pil:bilinear+aa"] = statistics.mean(psnr(r, ref) for r, ref in zip(pil, refs))
    scaled = [i for i, box in enumerate(boxes) if draft_reduction(box[2] - box[0], box[3] - box[1], size) > 1]
    if scaled:
        drafted = {i: np.asarray(resized_random_crop(images[i], size, min_area, random.Random(i), draft=True))
                   for i in scaled}
        out["pil:bilinear+aa, draft crops only"] = statistics.mean(psnr(pil[i], refs[i]) for i in scaled)
        out["pil:bilinear+aa+draft, draft crops only"] = statistics.mean(psnr(drafted[i], refs[i]) for i in scaled)
    return out


# --- the command -----------------------------------------------------------------------------------

def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="shard folder (tools/shard_imagenet.py output)")
    p.add_argument("--threads", type=ints, default=[1, 2], help="DALI CPU threads to run at, comma list")
    p.add_argument("--image-sizes", type=ints, default=[224, 160], help="px, comma list")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per figure")
    p.add_argument("--steps", type=int, default=8, help="batches per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--psnr-images", type=int, default=32, help="images for the resize quality figures")
    p.add_argument("--quick", action="store_true", help="the train stage and its decodes only, no filter figures")
    p.add_argument("--json", help="write the figures here (with provenance)")
    args = p.parse_args(argv)
    for key in ("batch_size", "steps", "repeats", "psnr_images"):
        if getattr(args, key) <= 0:
            p.error(f"--{key.replace('_', '-')} must be positive")
    if not args.threads or min(args.threads) <= 0 or not args.image_sizes or min(args.image_sizes) <= 0:
        p.error("--threads and --image-sizes must be positive integers")
    return args


def run(args) -> dict:
    torch.set_num_threads(1)  # the normalize and the baseline's transform on one core, as in a worker
    images = jpegs(args.data, max(args.psnr_images, args.batch_size * 2))
    result = {"args": vars(args), "images_in_memory": len(images), "sizes": {}}
    for size in args.image_sizes:
        entry = {"handoff_bytes_per_image": {"uint8": size * size * 3, "float16": size * size * 3 * 2},
                 "draft_share": {"min_area_0.08": draft_share(images, size, 0.08)},
                 "psnr_db": {} if args.quick else resize_quality(images[:args.psnr_images], size, 0.08),
                 "normalize_on_cpu": measure_normalize(args, size),
                 "baseline_in_process": measure_baseline(args, images, size),
                 "dali": {str(t): measure_dali(args, args.data, size, t) for t in args.threads}}
        result["sizes"][str(size)] = entry
        print(f"{size}px draft applies to {entry['draft_share']['min_area_0.08']:.0%} of crops; PSNR dB "
              + ", ".join(f"{k} {v:.1f}" for k, v in entry["psnr_db"].items()), flush=True)
    return result


@one_line_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ValueError, tarfile.TarError) as e:  # data too small for the windows; a tar webdataset cannot read
        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ShardError(why if args.data in why else f"{args.data}: {why}") from None
    write_json(args.json, result, CPU)
    return 0


if __name__ == "__main__":
    sys.exit(main())
