"""How a run is asked to stop, and how its ranks agree on the step to stop after.

SIGTERM (preemption, `scancel`, torchrun stopping its workers), SIGUSR1 (tools/slurm_train.sbatch's
notice before the time limit) and SIGINT set a flag on the host. The ranks vote on it after every
step without waiting for each other: step k's vote travels on an asynchronous all-reduce over a CPU
group while step k+1 runs, and is read after step k+1, when it has long arrived. Every rank reads
the same sum, so all stop after the same step, the one after the signal, and checkpoint together.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import torch
import torch.distributed as dist

from train.distributed import DistInfo

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopFlag:
    """Set by SIGTERM, SIGUSR1 or SIGINT; the loop finishes the step, checkpoints and exits. A
    second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> StopFlag:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)
        return self

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """The flag's handlers for the block, the previous ones back after it: a process that goes
        on (a test, a notebook, a forked pool worker) must not inherit a handler that only sets a
        flag no loop reads any more, so that SIGTERM would no longer end it."""
        previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        try:
            yield self.install()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


class StopVote:
    """One vote per step (`cast`), read one step later; one process needs no vote. Every rank casts
    as many votes as the others (the same steps), so the group's collectives stay in step; `close`
    waits for the last one."""

    def __init__(self, info: DistInfo):
        self.group = info.cpu_group
        self.pending: tuple[torch.Tensor, dist.Work] | None = None

    def cast(self, requested: bool) -> bool:
        """Post this step's vote; True when the previous step's vote, summed over ranks, asks to
        stop (then every rank gets True at the same step). One process: `requested` itself."""
        if self.group is None:
            return requested
        agreed = self.close()
        flag = torch.tensor([float(requested)])
        self.pending = flag, dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return agreed

    def close(self) -> bool:
        """Wait for the vote in flight, if any; whether it asks to stop."""
        if self.pending is None:
            return False
        flag, work = self.pending
        self.pending = None
        work.wait()
        return flag.item() > 0
