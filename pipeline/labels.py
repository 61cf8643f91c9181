"""The one parser for the shards' ASCII `cls` labels, used by every loader and by --verify.

A label is ASCII digits with optional white space around them (zero padding after them, as DALI's
`fn.pad` adds). Anything else, or a value >= num_classes, is an error naming the shard and sample.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.shards import ShardError

_BLANK = (0, 9, 10, 13, 32)  # NUL padding and ASCII white space
MAX_DIGITS = 18  # fits int64


def parse_labels(raw: np.ndarray, num_classes: int | None, name_of: Callable[[int], str]) -> np.ndarray:
    """(N, L) uint8 rows of ASCII, zero-padded -> int64 array of N labels, all rows at once (no
    Python loop per label).

    Raises ShardError naming `name_of(i)` (shard and sample key) for the first row that is not one
    run of 1..18 digits with only white space or padding around it, or whose value is >= num_classes.
    """
    b = raw.astype(np.int64)
    digit = (b >= 48) & (b <= 57)
    n = digit.sum(1)
    starts = (digit[:, 1:] & ~digit[:, :-1]).sum(1) + digit[:, 0]  # runs of digits in the row
    ok = (n > 0) & (n <= MAX_DIGITS) & (starts == 1) & np.all(digit | np.isin(b, _BLANK), 1)
    last = b.shape[1] - 1 - np.argmax(digit[:, ::-1], 1)  # column of each row's last digit
    exponent = np.clip(last[:, None] - np.arange(b.shape[1]), 0, MAX_DIGITS)
    labels = np.where(digit, (b - 48) * 10**exponent, 0).sum(1)
    bad = np.flatnonzero(~ok | (labels >= (num_classes if num_classes is not None else np.inf)))
    if bad.size:
        i = int(bad[0])
        text = bytes(raw[i]).rstrip(b"\0").decode("ascii", "replace")
        why = "is not a non-negative integer" if not ok[i] else f"is out of range for {num_classes} classes"
        raise ShardError(f"{name_of(i)}: cls {text[:20]!r} {why}")
    return labels


def parse_cls(raw: bytes, num_classes: int | None, name: str) -> int:
    """One sample's `cls` bytes -> its label (the same rules as parse_labels); a ShardError names
    `name` (shard and sample key). A plain label takes a scalar path, as this is called once per
    sample and the array parser's set-up dominates for one row; anything else goes through
    parse_labels, which says what is wrong."""
    text = raw.strip(bytes(_BLANK))
    if text.isdigit() and len(text) <= MAX_DIGITS and (num_classes is None or int(text) < num_classes):
        return int(text)
    row = np.frombuffer(raw or b"\0", dtype=np.uint8)[None]
    return int(parse_labels(row, num_classes, lambda i: name)[0])
