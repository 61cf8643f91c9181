"""The baseline a user would otherwise pick, done well: PyTorch DataLoader + webdataset + PIL.

The same augmentation spec as the DALI pipeline (pipeline/augment.py), the same sample split
across ranks (each rank reads its contiguous range of the epoch's shard order), files split
across DataLoader workers, pinned memory. The workers hand over what data.output says: float16
normalized by them, or uint8 (half the bytes) that the trainer normalizes on the device.

Each sample's random crop and flip come from an RNG seeded by (seed, epoch, rank, sample key), so
a resumed epoch skips the batches already done without decoding them and still gets the same
batches as an uninterrupted run. Bad data stops the epoch with a ShardError naming the shard and
sample. Each shard's tar headers are checked against its index and its sample count against the
manifest once per loader, in the training process, before the first epoch that reads it (for one
rank: all of them before the first batch), never inside an epoch's batches.

The workers are started once per loader and kept (persistent workers): each epoch's ShardStream
is handed to them through shared memory (Relay), so an epoch boundary costs no process start.
"""

from __future__ import annotations

import ctypes
import io
import math
import multiprocessing
import pickle
import random
import signal
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
from pipeline.s3 import StorageError
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
        for url, first, _ in files:  # staged and checked before their first epoch (BaselineLoader.stream)
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


class Relay(IterableDataset):
    """The ShardStream last given to `play`, read by whichever process iterates it. The stream is
    pickled into shared memory, which the workers see because they receive the Relay when they
    start; they read it each time the DataLoader starts an epoch (a new iter() of a DataLoader with
    persistent workers restarts the workers' iteration). So one DataLoader, its workers started
    once, reads every epoch, and every benchmark stage, of a loader. One epoch at a time."""

    def __init__(self, capacity: int):
        ctx = multiprocessing.get_context(WORKER_START)
        self.capacity = capacity  # bytes
        self._bytes, self._size = ctx.RawArray(ctypes.c_char, capacity), ctx.RawValue(ctypes.c_int64, 0)

    def play(self, stream: bytes) -> None:
        """Make the pickled ShardStream `stream` what the next iteration yields (call before iter()
        of the DataLoader: the workers read it then)."""
        if len(stream) > self.capacity:
            raise ValueError(f"a stream of {len(stream)} bytes does not fit the relay's {self.capacity}")
        ctypes.memmove(self._bytes, stream, len(stream))
        self._size.value = len(stream)

    def __iter__(self):
        return iter(pickle.loads(ctypes.string_at(self._bytes, self._size.value)))


WORKER_START = "forkserver"  # not fork: a process that already runs DALI or CUDA threads must not fork


def ignore_stop_signals(worker: int) -> None:
    """A DataLoader worker's start: SIGUSR1 (the SLURM script's notice) and SIGINT (a terminal's
    Ctrl-C reaches the whole process group) ask the training process to stop after its step and
    checkpoint; it then shuts its workers down. SIGTERM keeps its default: it is how
    multiprocessing and the DataLoader end a worker that does not stop by itself."""
    for signum in (signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def dataloader(loader: Loader, relay: Relay) -> DataLoader:
    """The DataLoader over `relay`: the loader's workers, kept between epochs (persistent), deaf
    to stop requests, and pinned memory on a GPU. (DataLoader workers run torch on one thread.)"""
    cfg = loader.cfg
    return DataLoader(relay, batch_size=loader.batch_size, num_workers=cfg.workers, worker_init_fn=ignore_stop_signals,
                      pin_memory=loader.device.type == "cuda",
                      prefetch_factor=cfg.prefetch if cfg.workers else None, drop_last=loader.train,
                      persistent_workers=cfg.workers > 0, multiprocessing_context=WORKER_START if cfg.workers else None)


def to_device(images: torch.Tensor, device: torch.device, pad: bool = False) -> torch.Tensor:
    """Workers' NHWC batch (uint8 or float16) -> `device`, [+ a zero 4th channel], NCHW shape in
    channels-last memory (no transpose)."""
    x = images.to(device, non_blocking=True)
    if pad:
        x = torch.nn.functional.pad(x, (0, 1))
    return x.permute(0, 3, 1, 2)


class BaselineLoader(Loader):
    """DataLoader + webdataset + PIL; output in the shared format (channels-last on the device)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.train:  # workers batch separately: count their (possibly partial) batches
            stream, workers = make_stream(self, 0, None), max(1, self.cfg.workers)
            self.batches = sum(math.ceil(stream.worker_count(w, workers) / self.batch_size) for w in range(workers))
        self.checked: set[str] = set()  # shards whose headers, index and count were checked
        self._relay: Relay | None = None  # made on first use, with its DataLoader
        self._dataloader: DataLoader | None = None

    def stream(self, epoch: int, transform: Transform, skip: int = 0) -> ShardStream:
        """This rank's ShardStream of `epoch`, once every shard it reads has been checked
        (check_index, once per shard for the loader's life: ShardError naming the first bad one)."""
        new = [piece for piece in self.rank_pieces(epoch) if piece.file not in self.checked]
        if self.split.source is not None:  # staged from object storage: as DALI, wait for the epoch's shards
            self.split.source.ensure_all(piece.file for piece in new)
        for piece in new:
            check_index(piece.file, piece.length)  # a truncated tar, a tampered index, a short shard
            self.checked.add(piece.file)
        return make_stream(self, epoch, transform, skip)

    def read(self, stream: ShardStream, count: int) -> Iterator:
        """`count` batches of `stream`, read by this loader's one DataLoader (made on first use,
        or again for a stream too big for its relay: the same files in another order and another
        transform fit in the room given); a worker's ShardError is re-raised as one line, and a
        stream that ends early is an error naming the split."""
        data = pickle.dumps(stream)
        if self._relay is None or len(data) > self._relay.capacity:
            self._relay = Relay(4 * len(data) + 2**16)
            self._dataloader = dataloader(self, self._relay)
        self._relay.play(data)
        it = iter(self._dataloader)
        for i in range(count):
            try:
                yield next(it)
            except (ShardError, StorageError) as e:  # re-raised from a worker with its traceback: keep the message
                last = str(e).strip().splitlines()[-1]
                raise type(e)(last.removeprefix(f"{type(e).__module__}.{type(e).__name__}: ")) from None
            except StopIteration:
                raise ShardError(f"{self.cfg.path}: {self.split.name} ended after {i} of {count} batches "
                                 "(a shard shorter than the manifest says?)") from None

    def epoch(self, epoch: int, skip: int = 0, position: bytes | None = None) -> Iterator[Batch]:
        size, fp16 = self.size_at(epoch), self.cfg.output == "float16"
        transform = (TrainTransform(size, self.cfg.min_area, normalize=fp16) if self.train
                     else ValTransform(size, val_resize_shorter(size, self.cfg.val_crop_ratio), normalize=fp16))
        stream = self.stream(epoch, transform, skip)
        for images, labels in self.read(stream, len(self) - skip):
            yield to_device(images, self.device, self.cfg.pad_channels), labels.to(self.device, non_blocking=True)
