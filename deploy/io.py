"""What every deploy command shares: its error type, atomic output files, optional packages."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from pipeline.atomic import atomic_path


class DeployError(ValueError):
    """Bad input to a deploy command; the message names the file or value. Exit code 2."""


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder that becomes `path` when the block ends without an error
    (pipeline/atomic.py); DeployError if the folder does not exist or the write fails."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DeployError(f"{path}: folder {path.parent} does not exist")
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as e:
        raise DeployError(f"{path}: cannot write ({e.strerror or e})") from None


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


def at_least_one(**flags: int) -> None:
    """DeployError naming the first command-line flag (batch_size -> --batch-size) below 1."""
    for name, value in flags.items():
        if value < 1:
            raise DeployError(f"--{name.replace('_', '-')} {value}: must be >= 1")
