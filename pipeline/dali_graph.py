"""The DALI graphs (train and val): the shard reader followed by a list of stages, each a DALI operator.

    train: decode a random-resized crop -> resize to size x size -> [colour jitter] -> [auto-augment]
           -> flip + normalize to float16 HWC (data.output: uint8: flip only, uint8 HWC)
    val:   decode -> resize the shorter side -> centre crop + normalize to float16 HWC (or uint8)

Decoding is `mixed` (nvJPEG and the hardware JPEG decoder) on a GPU and `cpu` otherwise. The reader
is given one rank's share of the shards (pipeline/share.py). Building and running the graphs epoch
after epoch is pipeline/dali.py's job.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import DataNode, Pipeline

from pipeline import shards
from pipeline.augment import (
    ASPECT_RANGE,
    CROP_ATTEMPTS,
    FLIP_PROBABILITY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    val_resize_shorter,
)
from pipeline.config import DataConfig
from pipeline.share import ReaderInputs

# GPU decoder buffers sized for ImageNet's large photos up front, so memory does not grow (and
# no reallocation stalls) over epochs; the values of NVIDIA's ResNet-50 reference pipeline.
DEVICE_MEMORY_PADDING = 211_025_920
HOST_MEMORY_PADDING = 140_544_512
PREALLOCATE_WIDTH, PREALLOCATE_HEIGHT = 5980, 6430  # the largest ImageNet train image, px

Stage = Callable[[DataNode], DataNode]


@dataclass(frozen=True)
class Decoder:
    """Where JPEGs are decoded: `mixed` on GPU `device_id` (with the hardware decoder taking
    `hw_decoder_load` of them), or `cpu` when device_id is None."""

    device_id: int | None
    hw_decoder_load: float = 0.65

    @property
    def device(self) -> str:
        return "cpu" if self.device_id is None else "mixed"

    def hints(self, crop: bool = False) -> dict:
        if self.device_id is None:
            return {}
        hints = dict(hw_decoder_load=self.hw_decoder_load, device_memory_padding=DEVICE_MEMORY_PADDING,
                     host_memory_padding=HOST_MEMORY_PADDING)
        if crop:
            hints.update(preallocate_width_hint=PREALLOCATE_WIDTH, preallocate_height_hint=PREALLOCATE_HEIGHT)
        return hints


# --- stages: each takes a DataNode of images and returns the next ---------------------------------

def decode(dec: Decoder) -> Stage:
    """The whole image, RGB HWC uint8."""
    return lambda jpg: fn.decoders.image(jpg, device=dec.device, output_type=types.RGB, **dec.hints())


def decode_random_crop(dec: Decoder, min_area: float) -> Stage:
    """RandomResizedCrop's crop, decoded alone (ROI decode: the rest of the JPEG is skipped)."""
    return lambda jpg: fn.decoders.image_random_crop(
        jpg, device=dec.device, output_type=types.RGB, random_area=[min_area, 1.0],
        random_aspect_ratio=list(ASPECT_RANGE), num_attempts=CROP_ATTEMPTS, **dec.hints(crop=True))


def resize_square(size: int) -> Stage:
    return lambda images: fn.resize(images, resize_x=size, resize_y=size, antialias=True)


def resize_shorter(px: int) -> Stage:
    return lambda images: fn.resize(images, resize_shorter=px, antialias=True)


def color_jitter(strength: float) -> Stage:
    def jitter(images):
        amount = dict(range=[1 - strength, 1 + strength])
        return fn.color_twist(images, brightness=fn.random.uniform(**amount), contrast=fn.random.uniform(**amount),
                              saturation=fn.random.uniform(**amount))
    return jitter


def auto_augment(kind: str, size: int) -> Stage:
    """TrivialAugment Wide ("trivial") or AutoAugment's ImageNet policy ("auto")."""
    from nvidia.dali.auto_aug import auto_augment as aa
    from nvidia.dali.auto_aug import trivial_augment as ta

    policy = {"trivial": ta.trivial_augment_wide, "auto": aa.auto_augment_image_net}[kind]
    return lambda images: policy(images, shape=[size, size])


def hand_off(pad: bool, crop: int | None = None, flip: bool = False, output: str = "float16") -> Stage:
    """The graph's last stage, in one kernel: [centre crop +] [random flip +] HWC (+ zero 4th
    channel) as the loader hands it over: normalized float16, or with output "uint8" the values
    as they are (pipeline/normalize.py normalizes them on the device); the crop, flip and padding
    are the same either way, so are the random flips."""
    values = (dict(dtype=types.FLOAT16, mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD])
              if output == "float16" else dict(dtype=types.UINT8))
    return lambda images: fn.crop_mirror_normalize(
        images, output_layout="HWC", crop=(crop, crop) if crop else None,
        mirror=fn.random.coin_flip(probability=FLIP_PROBABILITY) if flip else False, pad_output=pad, **values)


def train_stages(cfg: DataConfig, size: int, dec: Decoder) -> list[Stage]:
    stages = [decode_random_crop(dec, cfg.min_area), resize_square(size)]
    if cfg.color_jitter > 0:
        stages.append(color_jitter(cfg.color_jitter))
    if cfg.auto_augment != "none":
        stages.append(auto_augment(cfg.auto_augment, size))
    return stages + [hand_off(cfg.pad_channels, flip=True, output=cfg.output)]


def val_stages(cfg: DataConfig, size: int, dec: Decoder) -> list[Stage]:
    return [decode(dec), resize_shorter(val_resize_shorter(size, cfg.val_crop_ratio)),
            hand_off(cfg.pad_channels, crop=size, output=cfg.output)]


# --- the pipeline ---------------------------------------------------------------------------------

def read_shards(inputs: ReaderInputs, shuffle_buffer: int, train: bool):
    """Encoded jpg bytes, ASCII cls bytes (zero-padded) and each sample's source ('shard.tar:offset:name')."""
    jpg, cls = fn.readers.webdataset(
        paths=inputs.paths, index_paths=inputs.index_paths, ext=["jpg", "cls"],
        missing_component_behavior="error", shard_id=inputs.shard_id, num_shards=inputs.num_shards,
        random_shuffle=train, initial_fill=shuffle_buffer, pad_last_batch=not train,
        stick_to_shard=True, name="reader")
    return jpg, fn.pad(cls, fill_value=0), fn.get_property(jpg, key="source_info")


def sample_name(sources, i: int) -> str:
    """'shard.tar: sample KEY' of sample `i`, from the sources read_shards outputs ('path.tar:offset:member')."""
    info = bytes(np.asarray(sources[i])).decode()
    tar, _, member = info.rpartition(":")
    tar = tar.rpartition(":")[0] or tar
    return shards.sample_name(tar, member.split(".", 1)[0])


def build_pipeline(cfg: DataConfig, inputs: ReaderInputs, device_id: int | None, seed: int,
                   stages: list[Stage], train: bool, num_threads: int, position: bytes | None = None) -> Pipeline:
    """A built pipeline: the reader over `inputs` (a rank's share), then `stages` in order. Outputs
    (images, cls bytes, sources). With no stages the images are the encoded bytes (the benchmarks'
    read stage). Training pipelines keep DALI checkpoints (reader position and RNG states): built
    from `position` (`Pipeline.checkpoint()` of an identical pipeline), one continues where that one was."""
    @pipeline_def(enable_conditionals=train and cfg.auto_augment != "none")
    def pipe():
        images, cls, src = read_shards(inputs, cfg.shuffle_buffer, train)
        for stage in stages:
            images = stage(images)
        return images, cls, src

    p = pipe(batch_size=cfg.batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
             prefetch_queue_depth=cfg.prefetch, exec_dynamic=True, enable_checkpointing=train, checkpoint=position)
    p.build()
    return p


def padded_batches(pipe: Pipeline, batch_size: int) -> int:
    """Batches per epoch of a validation (pad_last_batch) reader. Sharding by sample itself, DALI
    pads every rank's share to the largest one's, so a rank can get a whole batch of padding."""
    meta = pipe.reader_meta("reader")
    return math.ceil(meta["epoch_size_padded"] / meta["number_of_shards"] / batch_size)
