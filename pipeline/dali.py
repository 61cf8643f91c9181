"""The DALI pipelines (train and val) and the loader that hands their output to PyTorch.

Stages, as DALI operators: read shards (webdataset reader, index files, this rank's share) ->
decode (random-crop ROI decode for train; `mixed` = nvJPEG + hardware decoder on a GPU, `cpu`
otherwise) -> resize (antialiased) -> [colour jitter / auto-augment] -> flip + normalize to
float16 HWC. A HWC batch permuted to NCHW is already channels-last, so the tensor DALI wrote is
given to PyTorch as is (DLPack, no copy, no transpose).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from pipeline.check import first_problem, preflight
from pipeline.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from pipeline.labels import parse_labels
from pipeline.loader import Batch, Loader, epoch_seed, shuffled_files
from pipeline.shards import ShardError, idx_path

# GPU decoder buffers sized for ImageNet's large photos up front, so memory does not grow (and
# no reallocation stalls) over epochs; the values of NVIDIA's ResNet-50 reference pipeline.
DEVICE_MEMORY_PADDING = 211_025_920
HOST_MEMORY_PADDING = 140_544_512
PREALLOCATE_WIDTH, PREALLOCATE_HEIGHT = 5980, 6430  # the largest ImageNet train image, px


def _reader(files: list[str], shard_id: int, num_shards: int, shuffle_buffer: int, train: bool):
    """Encoded jpg bytes, ASCII cls bytes and each sample's source ('shard.tar:offset:name')."""
    idx = [str(idx_path(f)) for f in files]
    have_idx = all(os.path.exists(i) for i in idx)  # else DALI scans the tars itself
    jpg, cls = fn.readers.webdataset(
        paths=files, index_paths=idx if have_idx else None, ext=["jpg", "cls"],
        missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards,
        random_shuffle=train, initial_fill=shuffle_buffer, pad_last_batch=not train,
        stick_to_shard=True, name="reader")
    return jpg, fn.pad(cls, fill_value=0), fn.get_property(jpg, key="source_info")


def _normalize(images, size: int | None, mirror, cfg: DataConfig):
    """Flip + normalize + cast to float16 HWC (+ zero 4th channel) in one DALI kernel."""
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT16, output_layout="HWC", crop=(size, size) if size else None,
        mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
        mirror=mirror, pad_output=cfg.pad_channels)


def _augment(images, cfg: DataConfig, size: int):
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        images = fn.color_twist(images, brightness=fn.random.uniform(range=[1 - j, 1 + j]),
                                contrast=fn.random.uniform(range=[1 - j, 1 + j]),
                                saturation=fn.random.uniform(range=[1 - j, 1 + j]))
    if cfg.auto_augment == "trivial":
        from nvidia.dali.auto_aug import trivial_augment

        images = trivial_augment.trivial_augment_wide(images, shape=[size, size])
    elif cfg.auto_augment == "auto":
        from nvidia.dali.auto_aug import auto_augment

        images = auto_augment.auto_augment_image_net(images, shape=[size, size])
    return images


def build_pipeline(cfg: DataConfig, files: list[str], shard_id: int, num_shards: int, device_id: int | None,
                   size: int, seed: int, stage: str = "train"):
    """A built DALI pipeline over `files` for one rank. `stage`: "train" (random-resized crop,
    flip, normalize), "val" (resize shorter side, centre crop, normalize), or for benchmarks
    "read" (bytes only) and "decode" (full decode only). Outputs (images, cls bytes, sources)."""
    decoder = "cpu" if device_id is None else "mixed"
    gpu_hints = {} if device_id is None else dict(
        hw_decoder_load=cfg.hw_decoder_load, device_memory_padding=DEVICE_MEMORY_PADDING,
        host_memory_padding=HOST_MEMORY_PADDING)
    crop_hints = dict(gpu_hints, preallocate_width_hint=PREALLOCATE_WIDTH,
                      preallocate_height_hint=PREALLOCATE_HEIGHT) if gpu_hints else {}

    @pipeline_def(enable_conditionals=cfg.auto_augment != "none" and stage == "train")
    def pipe():
        jpg, cls, src = _reader(files, shard_id, num_shards, cfg.shuffle_buffer, stage == "train")
        if stage == "read":
            return jpg, cls, src
        if stage == "decode":
            return fn.decoders.image(jpg, device=decoder, output_type=types.RGB, **gpu_hints), cls, src
        if stage == "val":
            images = fn.decoders.image(jpg, device=decoder, output_type=types.RGB, **gpu_hints)
            images = fn.resize(images, resize_shorter=size / cfg.val_crop_ratio, antialias=True)
            return _normalize(images, size, False, cfg), cls, src
        images = fn.decoders.image_random_crop(
            jpg, device=decoder, output_type=types.RGB, random_area=[cfg.min_area, 1.0],
            random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10, **crop_hints)
        images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
        images = _augment(images, cfg, size)
        return _normalize(images, None, fn.random.coin_flip(probability=0.5), cfg), cls, src

    p = pipe(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=device_id, seed=seed,
             prefetch_queue_depth=cfg.prefetch, exec_dynamic=True)
    p.build()
    return p


def _dali_reason(e: Exception) -> str:
    """The informative line of a DALI error (its messages carry a C++ stack trace)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for marker in ("Error in thread", "[/opt/dali", "Assert on", "Error when executing"):
        lines = [ln for ln in lines if not ln.startswith(marker)]
    useful = [ln for ln in lines if "Stacktrace" not in ln and not ln[:1].isdigit()]
    return " ".join(useful[:3])[:500] or str(e)[:500]


class DaliLoader(Loader):
    """DALI on the GPU (`mixed` decode) when the device is CUDA, on the CPU otherwise."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        preflight(self.split)  # bad index/truncated shard: fail now, naming it, not mid-epoch

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if self.train:
            files, _ = shuffled_files(self.split, self.cfg.seed, epoch)
        else:
            files = [str(f) for f in self.split.files]
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        seed = epoch_seed(self.cfg.seed, epoch, self.rank)
        try:
            pipe = build_pipeline(self.cfg, files, self.rank, self.world, device_id, self.image_size, seed,
                                  "train" if self.train else "val")
        except RuntimeError as e:
            raise self._explain(e, files) from None
        left = self.num_samples
        try:
            for _ in range(len(self)):
                try:
                    images, cls, src = pipe.run()
                except RuntimeError as e:
                    raise self._explain(e, files) from None
                images, labels = self._to_torch(images, cls, src)
                if not self.train and left < len(labels):  # padded duplicates of the last sample
                    images, labels = images[:left], labels[:left]
                left -= len(labels)
                yield images, labels
        finally:
            del pipe

    def _explain(self, e: RuntimeError, files: list[str]) -> ShardError:
        """DALI's errors name an operator, not a sample: find the bad sample by re-reading the
        shards in reading order (slow, but only on the way out)."""
        print(f"DALI failed ({_dali_reason(e)}); looking for the bad sample...", file=sys.stderr)
        problem = first_problem(files, self.num_classes)
        return ShardError(problem or f"{self.cfg.path}: {_dali_reason(e)}")

    def _to_torch(self, images, cls, src) -> Batch:
        labels = parse_labels(cls.as_array(), self.num_classes, lambda i: _source(src, i))
        cuda = self.device.type == "cuda"
        # Zero copy: the dynamic executor keeps this memory alive as long as the torch tensor lives;
        # on a GPU, DLPack makes torch's current stream wait for DALI's. NHWC storage = channels_last.
        with torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
            x = torch.from_dlpack(images.as_tensor()).permute(0, 3, 1, 2)
        return x, labels.pin_memory().to(self.device, non_blocking=True) if cuda else labels


def _source(src, i: int) -> str:
    """'shard.tar: sample KEY' from DALI's source_info ('path.tar:offset:member')."""
    info = bytes(np.asarray(src[i])).decode()
    tar, _, member = info.rpartition(":")
    tar = tar.rpartition(":")[0] or tar
    return f"{tar}: sample {member.split('.', 1)[0]}"
