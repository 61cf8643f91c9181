"""`plain`: the loader a user would otherwise write, from webdataset's documented recipe; a
comparison peer for the benchmarks, not a training loader, so nothing is added to its loop:

    dataset = (wds.WebDataset(urls, shardshuffle=100, nodesplitter=wds.split_by_node,
                              workersplitter=wds.split_by_worker)
               .shuffle(N).decode("pil").to_tuple("jpg", "cls").map_tuple(PlainTransform(...))
               .batched(batch, partial=False))
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=W, persistent_workers=True,
                           pin_memory=on a GPU)

torchvision is not a dependency here, so its RandomResizedCrop + RandomHorizontalFlip + ToTensor +
Normalize are written with PIL, numpy and torch, as torchvision runs them on a PIL image: the crop
box (pipeline.augment, torchvision's algorithm), the crop, PIL's bilinear resize of it
(antialiased: PIL widens the filter's support with the reduction), the flip, then the tensor.

The hand-off (what the workers give the training process) follows `data.output`, so that a
comparison is at equal hand-off: `uint8` (HWC, collated NHWC, handed on as the baseline's, for the
training step to normalize on the device) or `float16` (ToTensor + Normalize in the worker, then
half precision: CHW, collated NCHW).
webdataset deals whole shards to workers (split_by_worker), so an epoch is each worker's full
batches; the optional cross-worker reshuffle of the recipe (`.unbatched().shuffle().batched()` on
the WebLoader) is left out, as it adds per-sample work in the training process.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from pipeline.augment import FLIP_PROBABILITY, IMAGENET_MEAN, IMAGENET_STD, random_resized_crop_box
from pipeline.base import Batch, Loader
from pipeline.baseline import to_device
from pipeline.shards import ShardError

SHARD_SHUFFLE = 100  # shards in webdataset's shard-shuffle buffer (the value its docs use)
RESIZE = "PIL bilinear of the crop (antialiased), as torchvision on PIL images"


@dataclass(frozen=True)
class PlainTransform:
    """RandomResizedCrop(size, scale=(min_area, 1)) + RandomHorizontalFlip + ToTensor + Normalize
    of a PIL image, drawing from `random` (which DataLoader seeds per worker), handing off
    `hand_off`: uint8 HWC, or normalized CHW float16."""

    size: int
    min_area: float
    hand_off: str

    def __call__(self, im: Image.Image) -> torch.Tensor:
        box = random_resized_crop_box(im.width, im.height, random, self.min_area)
        im = im.crop(box).resize((self.size, self.size), Image.Resampling.BILINEAR)
        if random.random() < FLIP_PROBABILITY:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(im))  # HWC uint8 (np.array: a writable copy)
        if self.hand_off == "uint8":
            return x
        x = x.permute(2, 0, 1).float().div_(255)  # ToTensor
        x = (x - MEAN) / STD  # Normalize
        return x.half()


MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def encoded_length(jpg: bytes) -> int:
    """The read stage: the encoded image's bytes, undecoded."""
    return len(jpg)


def decoded_width(im: Image.Image) -> int:
    """The decode stage: decode("pil") has decoded the whole image (PIL's load + RGB)."""
    return im.width


def plain_dataset(urls: list[str], stage: str, batch_size: int, shuffle_buffer: int,
                  transform: Callable) -> wds.WebDataset:
    """The recipe cut at `stage`: read (bytes only), decode (the whole image), train (`transform`)."""
    ds = wds.WebDataset(urls, shardshuffle=SHARD_SHUFFLE, nodesplitter=wds.split_by_node,
                        workersplitter=wds.split_by_worker).shuffle(shuffle_buffer)
    if stage == "read":
        ds = ds.to_tuple("jpg", "cls").map_tuple(encoded_length, int)
    else:
        ds = ds.decode("pil").to_tuple("jpg", "cls").map_tuple(decoded_width if stage == "decode" else transform)
    return ds.batched(batch_size, partial=False)


class PlainLoader(Loader):
    """The recipe as a Loader (training split, one rank): `epoch(e)` yields the images handed off,
    on the device as the other loaders give them (uint8: NCHW shape in channels-last memory, as the
    baseline's, for the training step to normalize; float16: moved as it is, NCHW), and int64
    labels."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.train or self.world != 1:
            raise ValueError("the plain loader reads the train split on one rank")
        workers = max(1, self.cfg.workers)
        if workers > len(self.split.files):
            raise ValueError(f"{self.cfg.path}: {len(self.split.files)} shards for {workers} workers (webdataset "
                             "deals whole shards: lower --threads)")
        self.urls = [str(f) for f in self.split.files]
        # Each worker reads its shards (split_by_worker: every workers-th) and drops its last partial batch.
        lengths = self.split.shard_lengths
        self.batches = sum(sum(lengths[w::workers]) // self.batch_size for w in range(workers))
        self._train = self.webloader("train")

    def webloader(self, stage: str) -> wds.WebLoader:
        """The recipe's WebLoader, cut at `stage` (read, decode, train), with its own workers."""
        cfg = self.cfg
        transform = PlainTransform(self.size_at(0), cfg.min_area, cfg.output)
        ds = plain_dataset(self.urls, stage, self.batch_size, cfg.shuffle_buffer, transform)
        # forkserver, not fork: the benchmark process may already run DALI's threads
        return wds.WebLoader(ds, batch_size=None, num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                             pin_memory=self.device.type == "cuda",
                             multiprocessing_context="forkserver" if cfg.workers else None)

    def epoch(self, epoch: int, skip: int = 0, position: bytes | None = None) -> Iterator[Batch]:
        for images, labels in as_shard_errors(itertools.islice(self._train, skip, len(self)), self.cfg.path):
            images = (to_device(images, self.device) if self.cfg.output == "uint8"
                      else images.to(self.device, non_blocking=True))
            yield images, labels.to(self.device, non_blocking=True)


def as_shard_errors(batches: Iterator, path: str) -> Iterator:
    """`batches`, with any error raised while reading them (a worker's comes with its traceback in
    the message) as a ShardError of one line naming `path`, the error's last line and, where
    webdataset adds it, the shard."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:  # webdataset, tarfile and PIL raise many types for bad data
            last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise ShardError(f"{path}: the plain loader failed: {last}") from None
        yield batch


def epochs_of(webloader: wds.WebLoader, batches: int, path: str) -> Callable[[int], Iterator]:
    """epoch -> the first `batches` batches of a new pass over `webloader` (for benchmarks.timing.endless)."""
    return lambda epoch: as_shard_errors(itertools.islice(webloader, batches), path)
