"""What every deploy command shares: its error type, atomic output files, optional packages."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


class DeployError(ValueError):
    """Bad input to a deploy command; the message names the file or value. Exit code 2."""


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on a clean exit fsync it, rename it onto `path`
    (os.replace: readers see the old file or the whole new one) and fsync the folder, as
    train.checkpoint.atomic_save does. On an error the temporary file is removed and `path` is
    untouched. DeployError if the folder does not exist or the write fails."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DeployError(f"{path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as e:
        raise DeployError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def require(package: str, pip_name: str | None = None) -> ModuleType:
    """Import an optional package, or DeployError naming it and how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise DeployError(f"the '{package}' package is not installed (pip install {pip_name or package})") from None


def existing(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path if it exists, else DeployError naming it."""
    if not Path(path).exists():
        raise DeployError(f"{path}: no such {what}")
    return Path(path)
