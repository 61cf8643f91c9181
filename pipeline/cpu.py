"""This machine's CPU features, for choices that depend on them (native bf16 autocast in train/,
VNNI int8 kernels in deploy/)."""

from __future__ import annotations


def cpu_flags() -> set[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), []))
    except OSError:
        return set()
