"""A rank's share of an epoch, as the inputs of DALI's webdataset reader.

Left to itself, DALI's reader shards by sample (`shard_id`/`num_shards`), so every rank parses
every shard's index: at ImageNet scale 1.28 M lines per rank and per pipeline (3.5 s of the
build on a 2-core EPYC, and about 1.2 GiB resident while the pipeline lives). Instead a rank is
given only the shards that hold its samples; a shard it covers in part gets an index listing just
those samples (the offsets are within the tar, so the tar is read as it is). That is the same
samples in the same order as DALI's own sharding, so the batches do not change.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.base import Piece
from pipeline.shards import idx_path, slice_idx


@dataclass(frozen=True)
class ReaderInputs:
    """`paths`, `index_paths` (None: DALI scans the tars) and the reader's own sharding."""

    paths: list[str]
    index_paths: list[str] | None
    shard_id: int = 0
    num_shards: int = 1


@contextlib.contextmanager
def reader_inputs(files: list[str], pieces: list[Piece], rank: int, world: int) -> Iterator[ReaderInputs]:
    """The reader inputs of this rank's `pieces` of the epoch's `files`, valid inside the context.

    DALI parses indexes when its pipeline is built, so build inside the context: the trimmed
    indexes live in a temporary folder that is removed when it ends. Where a shard has no index,
    DALI must scan the tars, and shards by sample over all `files` itself."""
    if not all(idx_path(p.file).exists() for p in pieces):
        yield ReaderInputs(list(files), None, rank, world)
        return
    with tempfile.TemporaryDirectory(prefix="firehose-idx-") as tmp:
        index_paths = []
        for i, p in enumerate(pieces):
            idx = idx_path(p.file)
            if not p.whole:
                idx = Path(tmp) / f"{i}-{idx.name}"
                idx.write_text(slice_idx(idx_path(p.file), p.first, p.stop))
            index_paths.append(str(idx))
        yield ReaderInputs([p.file for p in pieces], index_paths)
