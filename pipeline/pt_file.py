"""Reading a .pt file (checkpoint, weights, teacher, pruned model): the one way this project
does it, so every folder refuses a pickle that would run code and reports a bad file in one line.
Here, at the bottom of the import graph, so that model/, train/ and deploy/ can all use it.
"""

from __future__ import annotations

from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used (missing, unreadable, partial, not
    weights-only, incomplete) or cannot be written (disk full, read-only folder). The message
    names the file."""


def first_line(e: Exception) -> str:
    """The first line of an error (torch.load's weights_only errors run to a dozen), <= 200 chars."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def safe_load(path: str | Path, what: str = "file") -> object:
    """torch.load to the CPU with weights_only=True. CheckpointError naming the file (`what` says
    which, e.g. "checkpoint") when it is missing, unreadable, or a pickle that asks to import or
    call anything (it is never run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what}") from None
    except Exception as e:  # a truncated zip, a bad pickle, a forbidden global...
        raise CheckpointError(f"{path}: unreadable or not weights-only ({first_line(e)})") from None
