"""The DALI loader: epochs of the graphs in pipeline/dali_graph.py, handed to PyTorch.

Epochs stream back to back: a training pipeline reads one epoch's shard order, so while epoch e
runs, the pipeline of epoch e+1 (at its image size) is built in a background thread and its first
batch decoded; when epoch e ends, epoch e+1's first batch is already there. The validation
pipeline is built once per image size and reused by every evaluation. Each rank's reader is given
only the shards holding its samples (pipeline/share.py), so a rank parses and holds its share of
the index, not the whole dataset's.

A HWC batch permuted to NCHW is already channels-last, so the tensor DALI wrote is given to
PyTorch as is (DLPack: no copy, no transpose).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from nvidia.dali.pipeline import Pipeline

from pipeline.base import Batch, Loader, epoch_seed
from pipeline.check import check_index, explain
from pipeline.dali_graph import Decoder, Stage, build_pipeline, padded_batches, sample_name, train_stages, val_stages
from pipeline.labels import parse_labels
from pipeline.shards import ShardError
from pipeline.share import ReaderInputs, reader_inputs


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc's malloc_trim). Each epoch's pipeline is built
    while the last one is still alive, so their allocations interleave and the old one's freed
    memory stays in the heap. It slows that creep; it does not stop it."""
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
            start, (pipe, first) = skip, self._build_with_first_batch(epoch, self.size_at(epoch), position)
        else:  # from the start; skipped batches (no position) are decoded, not used
            start, (pipe, first) = 0, self._pipeline_for_epoch(epoch)
        self._running = pipe
        try:
            for i in range(start, len(self)):
                outputs = first if i == start else self.run_batch(pipe, epoch)
                first = None
                if i == start and self.build_ahead and (self.epochs is None or epoch + 1 < self.epochs):
                    self._build_ahead(epoch + 1)  # overlaps this epoch; ready when it ends
                if i >= skip:
                    yield self._to_torch(*outputs)
                    self._keep_alive_until_used(outputs)
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
            self._keep_alive_until_used((images, labels))
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
        if self.split.source is not None:  # staged from object storage: DALI opens every shard it is given
            self.split.source.ensure_all(self.rank_files(epoch))
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

    def _build_with_first_batch(self, epoch: int, size: int, position: bytes | None = None) -> tuple[Pipeline, tuple]:
        """A training epoch's pipeline and its first batch (the prefetch queue fills behind it)."""
        pipe = self.build(epoch, size, position)
        return pipe, self.run_batch(pipe, epoch)

    def _build_ahead(self, epoch: int) -> None:
        """Start building `epoch`'s pipeline in the background (at most one ahead)."""
        self._drop_ahead()
        size = self.size_at(epoch)
        self._ahead = (epoch, size, self._builder.submit(self._build_with_first_batch, epoch, size))

    def _pipeline_for_epoch(self, epoch: int) -> tuple[Pipeline, tuple]:
        """The pipeline for `epoch` and its first batch: the one built ahead if it fits, else built now."""
        size = self.size_at(epoch)
        if self._ahead is not None and self._ahead[:2] == (epoch, size):
            future = self._ahead[2]
            self._ahead = None
            return future.result()
        self._drop_ahead()
        return self._build_with_first_batch(epoch, size)

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

    def _keep_alive_until_used(self, outputs: tuple) -> None:
        """The rule that makes the zero-copy hand-off safe: a tensor handed out keeps DALI's buffer
        alive while it lives, but DALI frees the buffer in its own stream order, which does not wait
        for the work torch has queued on it, so each batch is also kept here until an event recorded
        on torch's stream after it has passed. Called when the next batch is asked for; never waits
        (event.query())."""
        if self.device.type != "cuda":
            return
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self._inflight.append((done, outputs))
        while self._inflight and self._inflight[0][0].query():
            self._inflight.popleft()

    def _to_torch(self, images, cls, src) -> Batch:
        """DALI outputs -> (images NCHW channels-last: fp16, or uint8 with data.output uint8, int64
        labels) on the device. The images are DALI's buffer, not a copy: how long it lives is
        _keep_alive_until_used's rule."""
        labels = torch.from_numpy(parse_labels(cls.as_array(), self.num_classes, lambda i: sample_name(src, i)))
        cuda = self.device.type == "cuda"
        # DLPack makes torch's current stream wait for DALI's ready event (no host wait).
        # NHWC storage permuted to NCHW = channels_last.
        with torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
            x = torch.from_dlpack(images.as_tensor()).permute(0, 3, 1, 2)
        return x, labels.pin_memory().to(self.device, non_blocking=True) if cuda else labels
