"""The builder the trainer, the benchmarks and deploy call; the one place that names the backends.

    loader = build_loader(data_cfg, "train", rank, world, device, num_classes, epochs=90)
    for images, labels in loader.epoch(epoch): ...

The interface every backend shares is pipeline/base.py's Loader.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from pipeline import stage
from pipeline.base import Loader
from pipeline.check import preflight
from pipeline.config import DataConfig
from pipeline.s3 import is_remote
from pipeline.shards import SplitInfo, load_split

# Imported when asked for: a run on one backend does not pay for the others' imports (DALI's is the largest).
BACKENDS = {"dali": "pipeline.dali:DaliLoader", "baseline": "pipeline.baseline:BaselineLoader",
            "synthetic": "pipeline.synthetic:SyntheticLoader"}


def backend(name: str) -> type[Loader]:
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_loader(cfg: DataConfig, split: str, rank: int, world: int, device: torch.device,
                 num_classes: int | None = None, local_world: int = 1, *,
                 size_at: Callable[[int], int] | None = None, epochs: int | None = None) -> Loader:
    """The loader `cfg.loader` for `split` ("train" or "val") on `device`, for rank of world
    (`local_world` ranks on this node share its cores).

    `num_classes` defaults to the manifest's class list. `size_at(epoch)`: the crop side (px) of
    each epoch; None = the config's image size throughout. `epochs`: how many epochs the run
    reads; None = unknown (a loader may then prepare an epoch that is never read).

    An `s3://` data.path is staged into data.cache_dir (pipeline/stage.py): the manifest and the
    split's indexes before this returns, the shards in the background on the node's local rank 0
    (rank % local_world == 0: torchrun and srun number ranks node by node); a loader waits for its
    rank's shards of an epoch before the epoch's first batch.

    Raises ShardError (a shard that fails the pre-flight), FileNotFoundError (no data folder),
    StorageError (object storage failed, naming the URL) or ValueError naming the key (a config
    that does not fit the data), before any batch is read.
    """
    cfg.validate()
    if cfg.loader == "synthetic":
        info = SplitInfo(split, (), (max(cfg.batch_size * world * 8, world),), ())
        return backend("synthetic")(cfg, info, rank, world, device, split == "train", num_classes or 1000, local_world,
                                    size_at=size_at, epochs=epochs)
    info = stage.open_split(cfg.path, cfg.cache_dir, split) if is_remote(cfg.path) else load_split(cfg.path, split)
    num_classes = num_classes or len(info.classes)
    if not num_classes:
        raise ValueError(f"{cfg.path}: no class list in _info.json; give the number of classes "
                         "(model.num_classes, or --num-classes for the benchmarks)")
    preflight(info)  # a bad index or a truncated shard: fail now, naming it, not mid-epoch
    loader = backend(cfg.loader)(cfg, info, rank, world, device, split == "train", num_classes, local_world,
                                 size_at=size_at, epochs=epochs)
    if info.source is not None and rank % local_world == 0:
        first = rank - rank % local_world
        order = stage.node_order(loader.epoch_files, (epochs or 1) if loader.train else 1,
                                 range(first, min(first + local_world, world)), world)
        stage.stage_for_node(info, order, cfg.cache_dir)
    return loader
