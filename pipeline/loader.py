"""The one interface every loader shares, and the builders the trainer and benchmarks call.

A loader yields `(images, labels)` per batch: images `N x C x H x W` float16 in
`torch.channels_last` memory format (C = 3, or 4 with `pad_channels`), normalized with the ImageNet
mean/std; labels int64 class indices; both on the loader's device. `len(loader)` is the number of
batches of one epoch on this rank, known before the epoch starts and the same on every rank for
training. Validation loaders yield every sample of the rank's share exactly once (the last batch
may be smaller), so summing over ranks counts each validation image once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch

from pipeline.config import DataConfig
from pipeline.shards import SplitInfo, load_split

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


class Loader:
    """Base of every loader: sample bookkeeping, epoch lengths, and the image-size setting."""

    def __init__(self, cfg: DataConfig, split: SplitInfo, rank: int, world: int, device: torch.device,
                 train: bool, num_classes: int):
        self.cfg, self.split, self.rank, self.world = cfg, split, rank, world
        self.device, self.train, self.num_classes = torch.device(device), train, num_classes
        self.batch_size = cfg.batch_size
        self.image_size = cfg.image_size if train else cfg.val_image_size
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

    def set_image_size(self, size: int) -> None:
        """Crop side (px) from the next epoch on (progressive resizing); no restart needed."""
        self.image_size = int(size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch; their order depends only on (seed, epoch, rank)."""
        raise NotImplementedError


def build_loader(cfg: DataConfig, split: str, rank: int, world: int, device: torch.device,
                 num_classes: int | None = None) -> Loader:
    """The loader `cfg.loader` for `split` ("train" or "val") on `device`, for rank of world."""
    cfg.validate()
    train = split == "train"
    if cfg.loader == "synthetic":
        from pipeline.synthetic import SyntheticLoader

        info = SplitInfo(split, (), (max(cfg.batch_size * world * 8, world),), ())
        return SyntheticLoader(cfg, info, rank, world, device, train, num_classes or 1000)
    info = load_split(cfg.path, split)
    num_classes = num_classes or len(info.classes)
    if not num_classes:
        raise ValueError(f"{cfg.path}: no class list in _info.json; set model.num_classes")
    if cfg.loader == "dali":
        from pipeline.dali import DaliLoader

        return DaliLoader(cfg, info, rank, world, device, train, num_classes)
    from pipeline.baseline import BaselineLoader

    return BaselineLoader(cfg, info, rank, world, device, train, num_classes)
