"""The DALI pipelines (train and val) and the loader that hands their output to PyTorch.

A pipeline is the shard reader followed by a list of stages, each a DALI operator:

    train: decode a random-resized crop -> resize to size x size -> [colour jitter] -> [auto-augment]
           -> flip + normalize to float16 HWC
    val:   decode -> resize the shorter side -> centre crop + normalize to float16 HWC

Decoding is `mixed` (nvJPEG and the hardware JPEG decoder) on a GPU and `cpu` otherwise. A HWC
batch permuted to NCHW is already channels-last, so the tensor DALI wrote is given to PyTorch as
is (DLPack: no copy, no transpose).

Each rank's reader is given only the shards holding its samples (pipeline/share.py), so a rank
parses and holds its share of the index, not the whole dataset's.

Epochs stream back to back: a training pipeline reads one epoch's shard order, so while epoch e
runs, the pipeline of epoch e+1 (at its image size) is built in a background thread and its first
batch decoded; when epoch e ends, epoch e+1's first batch is already there. The validation
pipeline is built once per image size and reused by every evaluation.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import DataNode, Pipeline

from pipeline.augment import (
    ASPECT_RANGE,
    CROP_ATTEMPTS,
    FLIP_PROBABILITY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    val_resize_shorter,
)
from pipeline.base import Batch, Loader, epoch_seed
from pipeline.check import check_index, explain
from pipeline.config import DataConfig
from pipeline.labels import parse_labels
from pipeline.shards import ShardError
from pipeline.share import ReaderInputs, reader_inputs

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


def normalize(pad: bool, crop: int | None = None, flip: bool = False) -> Stage:
    """[Centre crop +] [random flip +] normalize + cast to float16 HWC (+ zero 4th channel): one kernel."""
    return lambda images: fn.crop_mirror_normalize(
        images, dtype=types.FLOAT16, output_layout="HWC", crop=(crop, crop) if crop else None,
        mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
        mirror=fn.random.coin_flip(probability=FLIP_PROBABILITY) if flip else False, pad_output=pad)


def train_stages(cfg: DataConfig, size: int, dec: Decoder) -> list[Stage]:
    stages = [decode_random_crop(dec, cfg.min_area), resize_square(size)]
    if cfg.color_jitter > 0:
        stages.append(color_jitter(cfg.color_jitter))
    if cfg.auto_augment != "none":
        stages.append(auto_augment(cfg.auto_augment, size))
    return stages + [normalize(cfg.pad_channels, flip=True)]


def val_stages(cfg: DataConfig, size: int, dec: Decoder) -> list[Stage]:
    return [decode(dec), resize_shorter(val_resize_shorter(size, cfg.val_crop_ratio)),
            normalize(cfg.pad_channels, crop=size)]


# --- the pipeline ---------------------------------------------------------------------------------

def read_shards(inputs: ReaderInputs, shuffle_buffer: int, train: bool):
    """Encoded jpg bytes, ASCII cls bytes (zero-padded) and each sample's source ('shard.tar:offset:name')."""
    jpg, cls = fn.readers.webdataset(
        paths=inputs.paths, index_paths=inputs.index_paths, ext=["jpg", "cls"],
        missing_component_behavior="error", shard_id=inputs.shard_id, num_shards=inputs.num_shards,
        random_shuffle=train, initial_fill=shuffle_buffer, pad_last_batch=not train,
        stick_to_shard=True, name="reader")
    return jpg, fn.pad(cls, fill_value=0), fn.get_property(jpg, key="source_info")


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


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc's malloc_trim). Each epoch's pipeline is built
    while the last one is still alive, so their allocations interleave and the old one's freed
    memory stays in the heap. It slows that creep; it does not stop it (seen over 8 short epochs
    of 160k samples while developing, figures not recorded; benchmarks/RESULTS.md has the
    recorded start-up runs, RSS within 1.1% over 4 epochs)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class DaliLoader(Loader):
    """DALI on the GPU (`mixed` decode) when the device is CUDA, on the CPU otherwise."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self._ahead: tuple[int, int, Future] | None = None  # (epoch, size, future (pipe, first batch))
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="dali-ahead") if self.train else None
        self._val: dict[int, Pipeline] = {}  # image size -> the validation pipeline, reused
        self._inflight: deque = deque()  # (CUDA event, outputs) of batches the GPU may still read
        self._running: Pipeline | None = None  # the training epoch being read (for position())

    def epoch(self, epoch: int, skip: int = 0, position: bytes | None = None) -> Iterator[Batch]:
        if not self.train:
            yield from self._val_epoch(epoch)
            return
        if skip and position:  # DALI's checkpoint: the reader and the RNGs continue after batch skip - 1
            start, (pipe, first) = skip, self._start(epoch, self.size_at(epoch), position)
        else:  # from the start; skipped batches (no position) are decoded, not used
            start, (pipe, first) = 0, self._take(epoch)
        self._running = pipe
        try:
            for i in range(start, len(self)):
                outputs = first if i == start else self.run_batch(pipe, epoch)
                first = None
                if i == start and (self.epochs is None or epoch + 1 < self.epochs):
                    self._prepare(epoch + 1)  # overlaps this epoch; ready when it ends
                if i >= skip:
                    yield self._to_torch(*outputs)
                    self._hold(outputs)
        finally:
            self._running = None
            del pipe
            trim_heap()  # the pipeline's index and buffers: give the pages back, or RSS creeps up

    def position(self) -> bytes | None:
        """DALI's checkpoint of the running training pipeline, after the batches handed out so far."""
        return self._running.checkpoint() if self._running is not None else None

    def _val_epoch(self, epoch: int) -> Iterator[Batch]:
        size = self.size_at(epoch)
        pipe = self._val.pop(size, None) or self.build(epoch, size)  # put back only at its epoch's end
        left = self.num_samples
        for _ in range(len(self)):
            images, labels = self._to_torch(*self.run_batch(pipe, epoch))
            if left < len(labels):  # padded duplicates of the last sample
                images, labels = images[:left], labels[:left]
            left -= len(labels)
            yield images, labels
            self._hold((images, labels))
        for _ in range(padded_batches(pipe, self.batch_size) - len(self)):
            self.run_batch(pipe, epoch)  # batches of padding only: read them, so the next evaluation starts at sample 0
        self._val[size] = pipe

    def stages(self, size: int) -> list[Stage]:
        """The stages of this loader's pipelines (train or val) at `size` px."""
        dec = Decoder(self.device_id, self.cfg.hw_decoder_load)
        return (train_stages if self.train else val_stages)(self.cfg, size, dec)

    def build(self, epoch: int, size: int, position: bytes | None = None,
              stages: list[Stage] | None = None) -> Pipeline:
        """This rank's built pipeline of `epoch` at `size` px: the reader, then `stages` (default:
        all of `self.stages(size)`; the benchmarks cut it short), continuing from `position`."""
        stages = self.stages(size) if stages is None else stages
        try:
            with self.rank_share(epoch) as inputs:
                pipe = build_pipeline(self.cfg, inputs, self.device_id, epoch_seed(self.cfg.seed, epoch, self.rank),
                                      stages, self.train, self.threads, position)
        except RuntimeError as e:
            raise explain(e, self.rank_files(epoch), self.num_classes, self.cfg.path, building=True) from None
        found = pipe.reader_meta("reader")["epoch_size"]  # the samples of the shards it was given
        expected = self.num_samples if inputs.num_shards == 1 else self.split.num_samples
        if found != expected:
            # A shard shorter than listed: among this rank's, or any (DALI's own sharding: all shift).
            for tar, n in ([(p.file, p.length) for p in self.rank_pieces(epoch)] if inputs.num_shards == 1
                           else zip(self.split.files, self.split.shard_lengths)):
                check_index(tar, n)  # raises, naming the shard
            raise ShardError(f"{self.cfg.path}: DALI finds {found} samples where the manifest lists {expected}")
        return pipe

    def rank_share(self, epoch: int) -> contextlib.AbstractContextManager[ReaderInputs]:
        """The reader's inputs for this rank's share of `epoch`; build the pipeline inside the context."""
        return reader_inputs(self.epoch_files(epoch)[0], self.rank_pieces(epoch), self.rank, self.world)

    def _start(self, epoch: int, size: int, position: bytes | None = None) -> tuple[Pipeline, tuple]:
        """A training epoch's pipeline and its first batch (the prefetch queue fills behind it)."""
        pipe = self.build(epoch, size, position)
        return pipe, self.run_batch(pipe, epoch)

    def _prepare(self, epoch: int) -> None:
        """Start building `epoch`'s pipeline in the background (at most one ahead)."""
        self._drop_ahead()
        size = self.size_at(epoch)
        self._ahead = (epoch, size, self._builder.submit(self._start, epoch, size))

    def _take(self, epoch: int) -> tuple[Pipeline, tuple]:
        """The pipeline for `epoch`: the one built ahead if it fits, else built now."""
        size = self.size_at(epoch)
        if self._ahead is not None and self._ahead[:2] == (epoch, size):
            future = self._ahead[2]
            self._ahead = None
            return future.result()
        self._drop_ahead()
        return self._start(epoch, size)

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            future, self._ahead = self._ahead[2], None
            with contextlib.suppress(Exception):  # its error, if any, belongs to an epoch not run
                future.result()

    def run_batch(self, pipe: Pipeline, epoch: int) -> tuple:
        """The next batch. On a GPU, `run(stream)` makes torch's current stream wait for DALI's
        work instead of the host (a plain `run()` blocks until the GPU has finished the batch)."""
        try:
            if self.device.type == "cuda":
                return pipe.run(torch.cuda.current_stream(self.device))
            return pipe.run()
        except RuntimeError as e:
            raise explain(e, self.rank_files(epoch), self.num_classes, self.cfg.path) from None

    def _hold(self, outputs: tuple) -> None:
        """Keep a consumed batch's buffers alive until the GPU work queued on it has finished: DALI
        frees (and reuses) its memory in its own stream order, which does not wait for torch's.
        Called when the next batch is asked for; never waits (event.query())."""
        if self.device.type != "cuda":
            return
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self._inflight.append((done, outputs))
        while self._inflight and self._inflight[0][0].query():
            self._inflight.popleft()

    def _to_torch(self, images, cls, src) -> Batch:
        """DALI outputs -> (images NCHW fp16 channels-last, int64 labels) on the device, no copy of
        the images. The executor keeps their memory alive as long as the torch tensor lives."""
        labels = torch.from_numpy(parse_labels(cls.as_array(), self.num_classes, lambda i: source(src, i)))
        cuda = self.device.type == "cuda"
        # DLPack makes torch's current stream wait for DALI's ready event (no host wait).
        # NHWC storage permuted to NCHW = channels_last.
        with torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
            x = torch.from_dlpack(images.as_tensor()).permute(0, 3, 1, 2)
        return x, labels.pin_memory().to(self.device, non_blocking=True) if cuda else labels


def source(src, i: int) -> str:
    """'shard.tar: sample KEY' from DALI's source_info ('path.tar:offset:member')."""
    info = bytes(np.asarray(src[i])).decode()
    tar, _, member = info.rpartition(":")
    tar = tar.rpartition(":")[0] or tar
    return f"{tar}: sample {member.split('.', 1)[0]}"
