"""Test-only fault injection; does nothing unless FIREHOSE_FAULT_KILL_AT is set.

FIREHOSE_FAULT_KILL_AT=EPOCH:STEP makes the last rank SIGKILL itself just before step STEP
(0-based) of epoch EPOCH (0-based), once per run folder: it writes RUN_DIR/fault-killed first, and
a rank that finds that file does not die again, so the group torchrun restarts runs to the end.
tests/test_reliability.py uses it to kill one worker of a torchrun job mid-epoch.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from train.config import ConfigError

ENV = "FIREHOSE_FAULT_KILL_AT"
MARKER = "fault-killed"


class KillAt:
    """Called before every training step; SIGKILLs this process at (epoch, step), once."""

    def __init__(self, epoch: int, step: int, marker: Path):
        self.epoch, self.step, self.marker = epoch, step, marker

    def __call__(self, epoch: int, step: int) -> None:
        if (epoch, step) == (self.epoch, self.step) and not self.marker.exists():
            self.marker.write_text(f"killed at epoch {epoch} step {step}\n")
            print(f"fault injection: SIGKILL at epoch {epoch} step {step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def kill_hook(run_dir: str | Path, rank: int, world: int) -> KillAt | None:
    """The hook for this rank (the last rank only), or None when the variable is not set."""
    spec = os.environ.get(ENV)
    if not spec or rank != world - 1:
        return None
    epoch, _, step = spec.partition(":")
    if not (epoch.isdigit() and step.isdigit()):
        raise ConfigError(f"{ENV}={spec!r}: expected EPOCH:STEP")
    return KillAt(int(epoch), int(step), Path(run_dir) / MARKER)
