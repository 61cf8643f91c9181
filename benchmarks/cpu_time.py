"""CPU seconds used by a process tree: the benchmark process (DALI's threads run inside it) and
every live descendant (DataLoader workers, which with `forkserver` are grandchildren), read from
/proc/<pid>/stat. `RUSAGE_CHILDREN` counts only children that have ended and been waited for, so
it misses persistent workers entirely.

A process's utime + stime covers all of its threads, ended ones included; cutime + cstime hold its
ended, reaped children. Counting both, over the whole tree, keeps the sum continuous when a worker
ends inside a window: its seconds move from its own line to its parent's. The clock ticks
(USER_HZ, usually 100 a second) limit the resolution to about 10 ms per process.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat after the ")" that closes the command name (man 5 proc: ppid is
# field 4, utime..cstime are fields 14-17; the rest of the line starts at field 3).
PPID, UTIME, STIME, CUTIME, CSTIME = 1, 11, 12, 13, 14


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # ended between the listing and the read
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """The pids of every live process below `root` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            if fields:
                children.setdefault(int(fields[PPID]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def tree_cpu_s(root: int | None = None) -> float:
    """CPU seconds (user + system) used so far by `root` (default: this process) with all its threads,
    every live descendant, and the ended children each of them has waited for."""
    root = os.getpid() if root is None else root
    ticks = 0
    for pid in [root, *descendants(root)]:
        fields = _stat(pid)
        if fields:
            ticks += sum(int(fields[i]) for i in (UTIME, STIME, CUTIME, CSTIME))
    return ticks / CLOCK_TICKS_PER_S
