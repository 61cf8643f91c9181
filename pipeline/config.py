"""The data section of the training config: which loader, which shards, which augmentations."""

from __future__ import annotations

import os
from dataclasses import dataclass

LOADERS = ("dali", "baseline", "synthetic")
AUTO_AUGMENTS = ("none", "trivial", "auto")
OUTPUTS = ("uint8", "float16")


@dataclass
class DataConfig:
    path: str = ""  # folder of shards (+ _info.json), from tools/shard_imagenet.py or timm's layout; or s3://bucket/prefix
    cache_dir: str = ""  # node-local folder the shards of an s3:// path are staged in (required then)
    loader: str = "dali"  # dali | baseline | synthetic
    batch_size: int = 256  # per rank
    image_size: int = 224  # train crop side, px (may change between epochs)
    val_image_size: int = 224  # val centre crop side, px
    val_crop_ratio: float = 0.875  # val: resize shorter side to val_image_size / ratio (256 for 224)
    min_area: float = 0.08  # RandomResizedCrop scale range [min_area, 1]
    num_threads: int = 0  # DALI CPU threads per rank; 0 = this rank's cores (affinity / local ranks) - 1
    workers: int = 4  # baseline DataLoader worker processes per rank
    prefetch: int = 2  # batches prepared ahead (DALI prefetch_queue_depth, DataLoader prefetch_factor)
    shuffle_buffer: int = 4096  # samples in the reader's shuffle buffer (DALI initial_fill)
    seed: int = 0  # data order and augmentation depend only on (seed, epoch, rank)
    pad_channels: bool = False  # emit 4 channels (4th zero) for the model's 4-channel stem
    hw_decoder_load: float = 0.65  # share of JPEGs sent to the GPU's hardware decoder (mixed only)
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0 = off
    auto_augment: str = "none"  # none | trivial (TrivialAugment Wide) | auto (AutoAugment ImageNet)
    # What the loader hands over: uint8 (0..255, normalized on the device: pipeline/normalize.py;
    # half the bytes, and on a GPU no CPU time in DALI's float16 normalize, a large share of its
    # CPU train stage: RESULTS.md, "CPU levers") or float16 (normalized on the CPU by DALI or the workers)
    output: str = "uint8"

    def validate(self) -> None:
        """Raise ValueError naming the key of the first bad value."""
        if self.loader not in LOADERS:
            raise ValueError(f"data.loader: {self.loader!r} is not one of {LOADERS}")
        if self.auto_augment not in AUTO_AUGMENTS:
            raise ValueError(f"data.auto_augment: {self.auto_augment!r} is not one of {AUTO_AUGMENTS}")
        if self.output not in OUTPUTS:
            raise ValueError(f"data.output: {self.output!r} is not one of {OUTPUTS}")
        for key in ("batch_size", "image_size", "val_image_size", "prefetch", "shuffle_buffer"):
            if getattr(self, key) <= 0:
                raise ValueError(f"data.{key}: must be positive, got {getattr(self, key)}")
        if self.num_threads < 0:
            raise ValueError(f"data.num_threads: must be >= 0 (0 = automatic), got {self.num_threads}")
        if self.workers < 0:
            raise ValueError(f"data.workers: must be >= 0, got {self.workers}")
        if not 0 < self.min_area <= 1:
            raise ValueError(f"data.min_area: must be in (0, 1], got {self.min_area}")
        if not 0 < self.val_crop_ratio <= 1:
            raise ValueError(f"data.val_crop_ratio: must be in (0, 1], got {self.val_crop_ratio}")
        if not 0 <= self.hw_decoder_load <= 1:
            raise ValueError(f"data.hw_decoder_load: must be in [0, 1], got {self.hw_decoder_load}")
        if self.loader != "synthetic" and not self.path:
            raise ValueError("data.path: no shard folder given")
        if self.loader != "synthetic" and self.path.startswith("s3://") and not self.cache_dir:
            raise ValueError("data.cache_dir: required when data.path is s3:// (a node-local folder to stage "
                             "the shards in)")


def dali_threads(cfg: DataConfig, local_world: int = 1) -> int:
    """DALI CPU threads for one rank: data.num_threads, or when 0 the cores this process may run on
    shared among the node's `local_world` ranks, minus one left for the training process itself."""
    if cfg.num_threads:
        return cfg.num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local_world) - 1)
