"""The input pipelines cut short, for measuring them stage by stage: `read` (shard bytes only),
`decode` (the decode the loader's pipeline starts with: DALI's training graph decodes the random
crop alone, the baseline and plain decode the whole image), `train` (the whole training
augmentation, as the trainer receives it). Built from the loaders' own pieces, so a stage measures
the code that trains. Nothing here imports DALI (the DALI stages come from the DaliLoader given),
so the other loaders' stages run where DALI does not import.

Each loader also says what it hands over to the training process and which resize filter it
uses (`describe`): a comparison is fair only at equal hand-off and filter class."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from benchmarks import plain
from benchmarks.timing import endless
from pipeline import baseline
from pipeline.base import Loader

if TYPE_CHECKING:
    from pipeline.dali import DaliLoader

STAGES = ("read", "decode", "train")


def dali_stage(loader: DaliLoader, stage: str) -> tuple[Iterator, Callable, Callable | None]:
    """(endless batches, images in a batch, bytes in a batch or None) for one stage of a DaliLoader."""
    if stage == "train":
        return endless(loader.epoch), lambda b: len(b[1]), None
    size = loader.size_at(0)
    pipe = loader.build(0, size, stages=[] if stage == "read" else loader.stages(size)[:1])
    # As the loader runs it (on a GPU: no host wait per batch); the reader wraps at its share's end.
    batches = iter(lambda: loader.run_batch(pipe, 0), None)
    nbytes = (lambda b: int(sum(np.prod(s) for s in b[0].shape()))) if stage == "read" else None
    return batches, lambda b: len(b[1]), nbytes


def read_bytes(sample: dict, rng) -> int:
    """The baseline's read stage: the encoded bytes' length (module-level: workers pickle it)."""
    return len(sample["jpg"])


def decoded_width(sample: dict, rng) -> int:
    """The baseline's decode stage: a full PIL decode, as its training transform starts."""
    return baseline.decode(sample).width


def baseline_stage(loader: Loader, stage: str) -> tuple[Iterator, Callable, Callable | None]:
    """The same for the DataLoader + webdataset + PIL baseline."""
    if stage == "train":
        return endless(loader.epoch), lambda b: len(b[1]), None
    transform = read_bytes if stage == "read" else decoded_width

    def epoch(e: int) -> Iterator:  # the loader's own workers and shard checks, with the stage's transform
        return loader.read(loader.stream(e, transform), len(loader))

    nbytes = (lambda b: int(b[0].sum())) if stage == "read" else None
    return endless(epoch), lambda b: len(b[0]), nbytes


def plain_stage(loader: plain.PlainLoader, stage: str) -> tuple[Iterator, Callable, Callable | None]:
    """The same for webdataset's documented recipe (benchmarks/plain.py)."""
    if stage == "train":
        return endless(loader.epoch), lambda b: len(b[1]), None
    batches = endless(plain.epochs_of(loader.webloader(stage), len(loader), loader.cfg.path))
    nbytes = (lambda b: int(b[0].sum())) if stage == "read" else None
    return batches, lambda b: len(b[0]), nbytes


STAGE_BUILDERS = {"dali": dali_stage, "baseline": baseline_stage, "plain": plain_stage}


def describe(name: str, output: str) -> dict:
    """What loader `name` hands the training process at data.output `output` ("hand_off", in short
    "hand_off_dtype") and which resize filter it uses ("resize")."""
    where = {"dali": "normalized in the pipeline", "baseline": "normalized in the workers",
             "plain": "NCHW, ToTensor + Normalize in the workers"}
    hand_off = ("uint8 NHWC, normalized on the device by the training step" if output == "uint8"
                else f"float16, {where[name]}")
    resize = {"dali": "DALI linear with antialias, of the decoded crop",
              "baseline": "PIL bilinear of the crop box (antialiased)", "plain": plain.RESIZE}[name]
    return {"hand_off_dtype": output, "hand_off": hand_off, "resize": resize}
