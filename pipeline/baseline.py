"""The baseline a user would otherwise pick, done well: PyTorch DataLoader + webdataset + PIL.

Same augmentations as the DALI pipeline (RandomResizedCrop with an antialiased bilinear resize,
horizontal flip, normalize), same sample split across ranks (each rank reads its contiguous range
of the epoch's shard order), files split across DataLoader workers, pinned memory, and uint8
batches normalized on the device (4x less to copy than float32).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from pipeline.loader import Batch, Loader, epoch_seed, rank_range, shuffled_files
from pipeline.shards import ShardError, parse_cls


def random_resized_crop_box(w: int, h: int, rng: random.Random, min_area: float) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (scale [min_area, 1], ratio [3/4, 4/3], 10 tries,
    then a centre crop clamped to the ratio range), as PIL's (left, top, right, bottom)."""
    area = w * h
    for _ in range(10):
        a = area * rng.uniform(min_area, 1.0)
        r = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(a * r)), round(math.sqrt(a / r))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, x + cw, y + ch
    r = w / h
    cw, ch = (w, round(w / (4 / 3))) if r > 4 / 3 else (round(h * 3 / 4), h) if r < 3 / 4 else (w, h)
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def _decode(sample: dict) -> Image.Image:
    try:
        return Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    except Exception as e:  # PIL raises many types for bad data
        raise ShardError(f"{sample['__url__']}: sample {sample['__key__']}: jpg does not decode ({e})") from None


def transform(sample: dict, stage: str, size: int, rng: random.Random, cfg: DataConfig):
    """One sample -> (HWC uint8 array, label) for "train"/"val"; bytes or pixel counts for the
    benchmark stages "read" and "decode"."""
    if "jpg" not in sample or "cls" not in sample:
        missing = "jpg" if "jpg" not in sample else "cls"
        raise ShardError(f"{sample['__url__']}: sample {sample['__key__']} has no {missing}")
    if stage == "read":
        return len(sample["jpg"]), 0
    im = _decode(sample)
    if stage == "decode":
        return im.width * im.height, 0
    if stage == "train":
        box = random_resized_crop_box(im.width, im.height, rng, cfg.min_area)
        im = im.resize((size, size), Image.Resampling.BILINEAR, box=box)  # PIL resize is antialiased
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    else:
        short = round(size / cfg.val_crop_ratio)
        s = short / min(im.width, im.height)
        w, h = max(size, round(im.width * s)), max(size, round(im.height * s))
        x, y = (w - size) // 2, (h - size) // 2
        im = im.resize((w, h), Image.Resampling.BILINEAR).crop((x, y, x + size, y + size))
    return np.array(im), sample["cls"]  # a writable copy: torch refuses read-only arrays


class ShardStream(IterableDataset):
    """Samples [start, end) of `files` (in order; global sample index = file start + position),
    split across DataLoader workers by file, transformed in the worker. With `repeat`, each worker
    cycles its files forever (training takes a fixed number of batches)."""

    def __init__(self, files, lengths, start, end, stage, size, cfg, seed, num_classes, repeat):
        self.files, self.lengths, self.start, self.end = files, lengths, start, end
        self.stage, self.size, self.cfg, self.seed = stage, size, cfg, seed
        self.num_classes, self.repeat = num_classes, repeat

    def worker_files(self, worker: int, workers: int) -> list[tuple[str, int, int]]:
        """(file, first global index, samples) of the files overlapping [start, end), for one worker."""
        starts = np.cumsum([0, *self.lengths])
        mine = [(f, int(s), n) for f, s, n in zip(self.files, starts, self.lengths)
                if s < self.end and s + n > self.start]
        return mine[worker::workers]

    def worker_count(self, worker: int, workers: int) -> int:
        """Samples of [start, end) that this worker yields in one pass."""
        return sum(min(s + n, self.end) - max(s, self.start) for _, s, n in self.worker_files(worker, workers))

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        files = self.worker_files(w, n)
        rng = random.Random(self.seed * 1000 + w)
        while True:
            stream = self._samples(files)
            if self.stage == "train":
                stream = wds.filters.shuffle(self.cfg.shuffle_buffer, self.cfg.shuffle_buffer, rng=rng)(stream)
            for sample in stream:
                x, cls = transform(sample, self.stage, self.size, rng, self.cfg)
                where = f"{sample['__url__']}: sample {sample['__key__']}"
                yield x, parse_cls(cls, self.num_classes, where) if self.stage in ("train", "val") else 0
            if not self.repeat or not files:
                return

    def _samples(self, files):
        for url, first, _ in files:
            tar = wds.tariterators.url_opener([{"url": url}])
            for i, s in enumerate(wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(tar))):
                if self.start <= first + i < self.end:
                    yield s


def make_stream(cfg: DataConfig, loader: Loader, epoch: int, stage: str) -> ShardStream:
    """The rank's ShardStream for one epoch (the benchmarks use it with other stages)."""
    if loader.train:
        files, lengths = shuffled_files(loader.split, cfg.seed, epoch)
    else:
        files, lengths = [str(f) for f in loader.split.files], list(loader.split.shard_lengths)
    a, b = rank_range(sum(lengths), loader.rank, loader.world)
    return ShardStream(files, lengths, a, b, stage, loader.image_size, cfg,
                       epoch_seed(cfg.seed, epoch, loader.rank), loader.num_classes, repeat=loader.train)


class BaselineLoader(Loader):
    """DataLoader + webdataset + PIL; output in the shared format (fp16 channels-last on device)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.train:  # workers batch separately: count their (possibly partial) batches
            stream, workers = make_stream(self.cfg, self, 0, "val"), max(1, self.cfg.workers)
            self.batches = sum(math.ceil(stream.worker_count(w, workers) / self.batch_size) for w in range(workers))
        mean = torch.tensor(IMAGENET_MEAN, device=self.device) * 255
        std = torch.tensor(IMAGENET_STD, device=self.device) * 255
        self.scale, self.shift = 1 / std, -mean / std

    def dataloader(self, epoch: int, stage: str) -> DataLoader:
        return DataLoader(make_stream(self.cfg, self, epoch, stage), batch_size=self.batch_size,
                          num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=self.cfg.prefetch if self.cfg.workers else None,
                          drop_last=self.train, persistent_workers=False,
                          # not fork: a process that already runs DALI or CUDA threads must not fork
                          multiprocessing_context="forkserver" if self.cfg.workers else None)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        it = iter(self.dataloader(epoch, "train" if self.train else "val"))
        for _ in range(len(self)):
            try:
                images, labels = next(it)
            except ShardError as e:  # re-raised from a worker with its traceback: keep the message
                raise ShardError(str(e).strip().splitlines()[-1].removeprefix("pipeline.shards.ShardError: ")) from None
            yield self.normalize(images), labels.to(self.device, non_blocking=True)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalized fp16, NCHW shape in channels-last memory (no transpose)."""
        x = images.to(self.device, non_blocking=True)
        x = torch.addcmul(self.shift, x, self.scale).half()  # (x - mean) / std in fp32, then fp16
        if self.cfg.pad_channels:
            x = torch.nn.functional.pad(x, (0, 1))
        return x.permute(0, 3, 1, 2)
