"""The baseline a user would otherwise pick, done well: PyTorch DataLoader + webdataset + PIL.

The same augmentation spec as the DALI pipeline (pipeline/augment.py), the same sample split
across ranks (each rank reads its contiguous range of the epoch's shard order), files split
across DataLoader workers, pinned memory. The workers hand over what data.output says: float16
normalized by them, or uint8 (half the bytes) that the trainer normalizes on the device.

Each sample's random crop and flip come from an RNG seeded by (seed, epoch, rank, sample key), so
a resumed epoch skips the batches already done without decoding them and still gets the same
batches as an uninterrupted run. Bad data stops the epoch with a ShardError naming the shard and
sample: each shard's tar headers are checked against its index and its sample count against the
manifest before it is read. That re-reads the tar headers (Python's tarfile) and the index of
every shard every epoch, a cost every baseline figure includes (benchmarks/RESULTS.md says how much).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline import shards
from pipeline.augment import FLIP_PROBABILITY, val_resize_shorter
from pipeline.base import Batch, Loader, epoch_seed, rank_range
from pipeline.check import REQUIRED, check_index
from pipeline.labels import parse_cls
from pipeline.normalize import normalize_hwc
from pipeline.pil_decode import resized_random_crop
from pipeline.shards import ShardError

Transform = Callable[[dict, random.Random], object]  # a sample (webdataset dict) -> what the worker yields


def sample_name(sample: dict) -> str:
    """'shard.tar: sample KEY' of a webdataset sample, for errors."""
    return shards.sample_name(sample["__url__"], sample["__key__"])


def decode(sample: dict) -> Image.Image:
    try:
        return Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    except Exception as e:  # PIL raises many types for bad data
        raise ShardError(f"{sample_name(sample)}: jpg does not decode ({e})") from None


def hand_over(im: Image.Image, normalize: bool) -> np.ndarray | torch.Tensor:
    """A worker's image as the loader hands it over: HWC uint8, or normalized float16 HWC."""
    x = np.array(im)  # a writable copy: torch refuses read-only arrays
    return normalize_hwc(torch.from_numpy(x)) if normalize else x


@dataclass(frozen=True)
class TrainTransform:
    """RandomResizedCrop + antialiased bilinear resize (PIL's resize is antialiased) + flip -> HWC
    uint8, or float16 normalized (`normalize`). `draft`: decode at a reduced scale where the crop
    keeps the output's resolution (pipeline/pil_decode.py; faster, a little blurrier). A picklable
    object, not a closure: DataLoader workers start by forkserver."""

    size: int
    min_area: float
    normalize: bool = False
    draft: bool = False  # off: the same filter as DALI's (the scaled decode blurs: RESULTS.md, "CPU levers")

    def __call__(self, sample: dict, rng: random.Random) -> np.ndarray | torch.Tensor:
        try:
            im = resized_random_crop(sample["jpg"], self.size, self.min_area, rng, self.draft)
        except Exception as e:  # PIL raises many types for bad data
            raise ShardError(f"{sample_name(sample)}: jpg does not decode ({e})") from None
        if rng.random() < FLIP_PROBABILITY:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return hand_over(im, self.normalize)


@dataclass(frozen=True)
class ValTransform:
    """Resize the shorter side to `short` px, centre crop size x size -> HWC uint8, or float16
    normalized (`normalize`)."""

    size: int
    short: int
    normalize: bool = False

    def __call__(self, sample: dict, rng: random.Random) -> np.ndarray | torch.Tensor:
        im = decode(sample)
        s = self.short / min(im.width, im.height)
        w, h = max(self.size, round(im.width * s)), max(self.size, round(im.height * s))
        x, y = (w - self.size) // 2, (h - self.size) // 2
        return hand_over(im.resize((w, h), Image.Resampling.BILINEAR).crop((x, y, x + self.size, y + self.size)),
                         self.normalize)


class ShardStream(IterableDataset):
    """(transform(sample), label) for samples [start, end) of `files` (global sample index = the
    file's first index + position), split across DataLoader workers by file.

    Training (`repeat`): each worker shuffles its samples through a buffer and cycles its files
    forever (the loader takes a fixed number of batches). `skip` batches of the epoch are passed
    over without being transformed: worker w plays the part of worker (w + skip) % workers, so the
    DataLoader's round-robin hands out the same batches as an uninterrupted epoch.
    """

    def __init__(self, files: list[str], lengths: list[int], start: int, end: int, transform: Transform,
                 seed: int, num_classes: int, shuffle_buffer: int = 0, repeat: bool = False,
                 skip: int = 0, batch_size: int = 1):
        self.files, self.lengths, self.start, self.end = files, lengths, start, end
        self.transform, self.seed, self.num_classes = transform, seed, num_classes
        self.shuffle_buffer, self.repeat, self.skip, self.batch_size = shuffle_buffer, repeat, skip, batch_size

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
        w, workers = (info.id, info.num_workers) if info else (0, 1)
        role = (w + self.skip) % workers
        files = self.worker_files(role, workers)
        passed = max(0, -(-(self.skip - role) // workers)) * self.batch_size  # samples of skipped batches
        order = random.Random(self.seed * 1000 + role)  # the shuffle buffer's order
        while True:
            stream = self._samples(files)
            if self.shuffle_buffer:
                stream = wds.filters.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=order)(stream)
            for sample in stream:
                if passed:
                    passed -= 1
                    continue
                missing = [e for e in REQUIRED if e not in sample]
                if missing:
                    raise ShardError(f"{sample_name(sample)} has no {missing[0]}")
                x = self.transform(sample, random.Random(f"{self.seed}/{sample['__key__']}"))
                yield x, parse_cls(sample["cls"], self.num_classes, sample_name(sample))
            if not self.repeat or not files:
                return

    def _samples(self, files):
        for url, first, n in files:
            check_index(url, n)  # a truncated tar, a tampered index, a short shard: ShardError
            try:
                tar = wds.tariterators.url_opener([{"url": url}])
                for i, s in enumerate(wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(tar))):
                    if self.start <= first + i < self.end:
                        yield s
            except ShardError:
                raise
            except Exception as e:  # webdataset and tarfile raise many types for a damaged tar
                raise ShardError(f"{url}: unreadable tar ({type(e).__name__}: {e})") from None


def make_stream(loader: Loader, epoch: int, transform: Transform, skip: int = 0) -> ShardStream:
    """The rank's ShardStream for one epoch (the benchmarks pass their own transforms)."""
    files, lengths = loader.epoch_files(epoch)
    a, b = rank_range(sum(lengths), loader.rank, loader.world)
    cfg = loader.cfg
    return ShardStream(files, lengths, a, b, transform, epoch_seed(cfg.seed, epoch, loader.rank),
                       loader.num_classes, cfg.shuffle_buffer if loader.train else 0, repeat=loader.train,
                       skip=skip, batch_size=loader.batch_size)


def dataloader(loader: Loader, stream: ShardStream) -> DataLoader:
    cfg = loader.cfg
    return DataLoader(stream, batch_size=loader.batch_size, num_workers=cfg.workers,
                      pin_memory=loader.device.type == "cuda",
                      prefetch_factor=cfg.prefetch if cfg.workers else None, drop_last=loader.train,
                      persistent_workers=False,
                      # not fork: a process that already runs DALI or CUDA threads must not fork
                      multiprocessing_context="forkserver" if cfg.workers else None)


def batches(loader: Loader, stream: ShardStream, count: int) -> Iterator:
    """`count` batches of a DataLoader over `stream`; a worker's ShardError is re-raised as one
    line, and a stream that ends early is an error naming the split."""
    it = iter(dataloader(loader, stream))
    for i in range(count):
        try:
            yield next(it)
        except ShardError as e:  # re-raised from a worker with its traceback: keep the message
            raise ShardError(str(e).strip().splitlines()[-1].removeprefix("pipeline.shards.ShardError: ")) from None
        except StopIteration:
            raise ShardError(f"{loader.cfg.path}: {loader.split.name} ended after {i} of {count} batches "
                             "(a shard shorter than the manifest says?)") from None


class BaselineLoader(Loader):
    """DataLoader + webdataset + PIL; output in the shared format (channels-last on the device)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.train:  # workers batch separately: count their (possibly partial) batches
            stream, workers = make_stream(self, 0, None), max(1, self.cfg.workers)
            self.batches = sum(math.ceil(stream.worker_count(w, workers) / self.batch_size) for w in range(workers))

    def epoch(self, epoch: int, skip: int = 0, position: bytes | None = None) -> Iterator[Batch]:
        size, fp16 = self.size_at(epoch), self.cfg.output == "float16"
        transform = (TrainTransform(size, self.cfg.min_area, normalize=fp16) if self.train
                     else ValTransform(size, val_resize_shorter(size, self.cfg.val_crop_ratio), normalize=fp16))
        stream = make_stream(self, epoch, transform, skip)
        for images, labels in batches(self, stream, len(self) - skip):
            yield self.to_device(images), labels.to(self.device, non_blocking=True)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """The workers' NHWC batch (uint8 or float16) -> the device, [+ zero 4th channel], NCHW
        shape in channels-last memory (no transpose)."""
        x = images.to(self.device, non_blocking=True)
        if self.cfg.pad_channels:
            x = torch.nn.functional.pad(x, (0, 1))
        return x.permute(0, 3, 1, 2)
