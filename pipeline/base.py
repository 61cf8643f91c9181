"""The one interface every loader shares, and the bookkeeping they have in common.

A loader yields `(images, labels)` per batch: images `N x C x H x W` in `torch.channels_last`
memory format (C = 3, or 4 with `pad_channels`), float16 normalized with the ImageNet mean/std, or
uint8 (0..255, a zero 4th channel) with `data.output: uint8`, which pipeline/normalize.py's
`model_input` normalizes on the device (the synthetic loader always yields float16: the
model-only figure is taken from it); labels int64 class indices; both on the loader's device.
`len(loader)` is the number of batches of one epoch on this rank, known before the epoch starts
and the same on every rank for training. Validation loaders yield every sample of the rank's
share exactly once (the last batch may be smaller), so summing over ranks counts each validation
image once.

Data order: training shards are read in an order that depends only on (seed, epoch), and each
rank reads its contiguous share of that order (DALI's reader sharding formula), so the batches of
an epoch depend only on (seed, epoch, rank).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import DataConfig, dali_threads
from pipeline.shards import SplitInfo

Batch = tuple[torch.Tensor, torch.Tensor]


def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous share of n samples (DALI's reader sharding formula)."""
    return n * rank // world, n * (rank + 1) // world


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 31-bit seed that depends only on (seed, epoch, rank): data order survives a resume."""
    return random.Random(f"{seed}/{epoch}/{rank}").getrandbits(31)


def shuffled_files(split: SplitInfo, seed: int, epoch: int) -> tuple[list[str], list[int]]:
    """Shard paths and lengths in an order that depends only on (seed, epoch): tar-order shuffling
    between epochs, the same on every rank, so ranks still read disjoint ranges."""
    order = list(range(len(split.files)))
    random.Random(epoch_seed(seed, epoch)).shuffle(order)
    return [str(split.files[i]) for i in order], [split.shard_lengths[i] for i in order]


@dataclass(frozen=True)
class Piece:
    """Samples [first, stop) of a shard of `length` samples (indexes within the shard)."""

    file: str
    first: int
    stop: int
    length: int

    @property
    def whole(self) -> bool:
        return self.first == 0 and self.stop == self.length


def pieces_in_range(files: list[str], lengths: list[int], start: int, end: int) -> list[Piece]:
    """The parts of `files` that hold samples [start, end) of their concatenation, in order."""
    first = np.cumsum([0, *lengths]).tolist()
    return [Piece(f, max(start - s, 0), min(end - s, n), n)
            for f, s, n in zip(files, first, lengths) if s < end and s + n > start]


class Loader:
    """Base of every loader: sample bookkeeping, epoch lengths and the image size per epoch.

    `size_at(epoch)` is the crop side (px) of each epoch (progressive resizing); None = the
    config's image size (val_image_size for validation) throughout. `epochs` is how many epochs
    the run will read, or None when unknown. Both are known from the start so that a loader can
    prepare the next epoch ahead, at its size, and nothing past the last one.
    """

    # Whether the next epoch is prepared during this one (DALI: its pipeline built and its first
    # batch run). Input benchmarks of the steady state turn it off: that work belongs to the
    # epoch boundary, which benchmarks.startup measures as turnover.
    build_ahead = True

    def __init__(self, cfg: DataConfig, split: SplitInfo, rank: int, world: int, device: torch.device,
                 train: bool, num_classes: int, local_world: int = 1, *,
                 size_at: Callable[[int], int] | None = None, epochs: int | None = None):
        self.cfg, self.split, self.rank, self.world = cfg, split, rank, world
        self.threads = dali_threads(cfg, local_world)  # CPU threads of this rank's pipeline
        self.device, self.train, self.num_classes = torch.device(device), train, num_classes
        self.batch_size = cfg.batch_size
        size = cfg.image_size if train else cfg.val_image_size
        self.size_at: Callable[[int], int] = size_at or (lambda epoch: size)
        self.epochs = epochs
        n = split.num_samples
        if world > n:
            raise ValueError(f"{split.name}: {world} ranks but only {n} samples")
        a, b = rank_range(n, rank, world)
        self.num_samples = b - a  # samples this rank reads per epoch
        if train:
            self.batches = (n // world) // self.batch_size  # the smallest rank's full batches
            if self.batches == 0:
                raise ValueError(f"data.batch_size: {n} {split.name} samples over {world} ranks give "
                                 f"no full batch of {self.batch_size} per rank")
        else:
            self.batches = math.ceil(self.num_samples / self.batch_size)

    def __len__(self) -> int:
        return self.batches

    def epoch_files(self, epoch: int) -> tuple[list[str], list[int]]:
        """Every shard of the split in this epoch's reading order, with its sample count."""
        if self.train:
            return shuffled_files(self.split, self.cfg.seed, epoch)
        return [str(f) for f in self.split.files], list(self.split.shard_lengths)

    def rank_files(self, epoch: int) -> list[str]:
        """The shards this rank reads in `epoch`, in order (where a bad sample must be)."""
        return [p.file for p in self.rank_pieces(epoch)]

    def rank_pieces(self, epoch: int) -> list[Piece]:
        """This rank's samples of `epoch` as parts of shards, in reading order."""
        files, lengths = self.epoch_files(epoch)
        return pieces_in_range(files, lengths, *rank_range(sum(lengths), self.rank, self.world))

    def epoch(self, epoch: int, skip: int = 0, position: bytes | None = None) -> Iterator[Batch]:
        """Batches skip..len(self)-1 of `epoch`: skip > 0 resumes mid-epoch with the same batches an
        uninterrupted run gives (`position`, from `position()` when the run stopped, lets a loader
        continue without re-reading the skipped batches). Their order depends only on (seed, epoch, rank)."""
        raise NotImplementedError

    def position(self) -> bytes | None:
        """Where the running training epoch stands, for a mid-epoch checkpoint; None when the
        loader needs nothing beyond the count of batches done to resume."""
        return None
