"""The one atomic file write, used by the sharding tool, the checkpoints and every command's output.

The bytes go to a temporary file in the target's folder (`.NAME.tmp-PID`), which is flushed,
fsynced and renamed over the target; then the folder is fsynced, so the rename itself survives a
power cut. A crash leaves the old file or the complete new one, never a partial one. A failed
write removes its temporary file and raises OSError naming the target.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP = ".tmp-"  # in `.{name}.tmp-{pid}`: a write in progress, or a killed writer's leftover


def temp_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}{TMP}{os.getpid()}")


def stale_temps(folder: str | Path, name: str = "*") -> list[Path]:
    """The temporary files in `folder` of writes of files matching `name` (a glob): a killed
    writer's leftovers when no writer is running."""
    return sorted(Path(folder).glob(f".{name}{TMP}*"))


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """`with atomic_path(p) as tmp: writer(tmp)`: for writers that take a file name (torch.onnx.export,
    ONNX Runtime). `p` appears, complete, only when the block ends without an error. An OSError in
    the block (disk full, read-only folder) that names no other file is re-raised naming `p`.
    `durable=False` skips the fsyncs (disposable data: a kill still leaves no partial file under
    `p`, a power cut may)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except OSError as e:
        if e.filename not in (None, str(tmp), tmp):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, durable: bool = True) -> Iterator[BinaryIO]:
    """`with atomic_file(p) as f: f.write(...)`: atomic_path with the file opened for writing."""
    with atomic_path(path, durable) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically (see atomic_file)."""
    with atomic_file(path, durable) as f:
        f.write(data)
