"""Shards staged from object storage onto node-local disk, ahead of the reader.

`data.path: s3://bucket/prefix` is mirrored under `data.cache_dir/bucket/prefix`, and the loaders
read the mirror as they read any shard folder. Every rank fetches the small manifest
(`_info.json`: the current sha256 of every file), then the split's indexes (the pre-flight and
DALI read them first); local rank 0 then stages the node's shards in a background thread, in the
order the node's ranks read them (epoch by epoch, rank by rank), then the rest of the split.

One download per file per node: a file is fetched only by whoever holds its lock
(`.locks/NAME.lock`, fcntl), and everyone else waits for it to appear. A loader that needs a file
nobody is fetching takes the lock and fetches it itself, so a file needed now never waits behind
the queue, and a stager that died or failed leaves no one waiting forever. A file appears under
its final name only after its sha256 matched the manifest (pipeline/s3.py: `.part`, then rename),
and `.staged/NAME` records (sha256, size, mtime) of that verified file: a rerun skips it with a
stat and no re-hash, and a file changed in storage (another sha256) is fetched again.

Disk: the mirror keeps every staged shard (no eviction: each epoch reads a different share of
them). A rank that stages checks first that the cache's disk has room for what is still missing
of its split, and stops with one line naming data.cache_dir and the figures if not.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import itertools
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline import s3
from pipeline.atomic import atomic_write
from pipeline.base import pieces_in_range, rank_range
from pipeline.shards import INFO_NAME, SplitInfo, idx_path, load_split

LOCKS = ".locks"
RECORDS = ".staged"
POLL_S = 0.05  # how often a waiter looks for a file another process is fetching
_CLIENT_LOCK = threading.Lock()  # boto3's session set-up is not thread-safe


@functools.lru_cache(maxsize=4)
def _client(opts: s3.S3Options, env: tuple):
    return s3.client(opts)


def client(opts: s3.S3Options):
    """This process's S3 client for `opts` and the AWS variables as they are (one, shared by its
    threads; a new one where the variables changed)."""
    with _CLIENT_LOCK:
        return _client(opts, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))


@dataclasses.dataclass(frozen=True)
class ShardSource:
    """Where a mirrored folder's files come from: `url` (s3://bucket/prefix) -> `root`, each file
    checked against `sha256` (file name -> hex digest; a file not listed is checked by nothing but
    its complete download). Picklable: it travels with the loader's SplitInfo."""

    url: str
    root: Path
    sha256: dict
    opts: s3.S3Options = s3.DEFAULTS

    def _record(self, name: str) -> Path:
        return self.root / RECORDS / name

    def staged(self, name: str) -> bool:
        """Whether `name` is in the mirror and verified against the current manifest (a stat and a
        small read: no hashing)."""
        try:
            st = (self.root / name).stat()
            return self._record(name).read_text() == f"{self.sha256.get(name, '-')} {st.st_size} {st.st_mtime_ns}"
        except OSError:
            return False

    def ensure(self, path: str | Path) -> Path:
        """The mirrored file `path` (in `root`), once staged: waits while another process or thread
        fetches it, fetches it here when no one is. StorageError naming the URL on failure."""
        name = Path(path).name
        (self.root / LOCKS).mkdir(parents=True, exist_ok=True)
        while not self.staged(name):
            with open(self.root / LOCKS / f"{name}.lock", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # someone else is fetching it
                    time.sleep(POLL_S)
                    continue
                if not self.staged(name):
                    self._fetch(name)
        return self.root / name

    def ensure_all(self, paths: Iterable[str | Path]) -> None:
        """`ensure` for each of `paths`, `opts.workers` at a time; the first error is raised."""
        Transfers(self.ensure, paths, self.opts.workers).wait()

    def _fetch(self, name: str) -> None:
        """Download `name` (the caller holds its lock) and record it as verified."""
        dest = self.root / name
        self._record(name).unlink(missing_ok=True)
        s3.download(client(self.opts), s3.join(self.url, name), dest, self.sha256.get(name), self.opts)
        st = dest.stat()
        (self.root / RECORDS).mkdir(exist_ok=True)
        atomic_write(self._record(name), f"{self.sha256.get(name, '-')} {st.st_size} {st.st_mtime_ns}".encode(),
                     durable=False)


class Transfers:
    """`fn(item)` for each of `items` on `workers` daemon threads (a download in flight does not
    hold up the process's exit); the first error stops the rest and is kept in `error`."""

    def __init__(self, fn: Callable, items: Iterable, workers: int):
        self._items, self._lock = iter(items), threading.Lock()
        self.error: BaseException | None = None
        self._running = max(1, workers)
        self.finished = threading.Event()
        for i in range(self._running):
            threading.Thread(target=self._work, args=(fn,), daemon=True, name=f"stage-{i}").start()

    def _work(self, fn: Callable) -> None:
        try:
            while self.error is None:
                with self._lock:
                    item = next(self._items, None)
                if item is None:
                    return
                try:
                    fn(item)
                except Exception as e:
                    self.error = self.error or e
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    self.finished.set()

    def wait(self) -> None:
        """Block until every item is done or one failed; raise the first error."""
        self.finished.wait()
        if self.error is not None:
            raise self.error


def mirror_root(url: str, cache_dir: str | Path) -> Path:
    """The local folder that mirrors `url`: cache_dir/bucket/prefix."""
    bucket, prefix = s3.split_url(url)
    return Path(cache_dir, bucket, *filter(None, prefix.split("/")))


def open_split(url: str, cache_dir: str | Path, split: str, opts: s3.S3Options = s3.DEFAULTS) -> SplitInfo:
    """The split of the dataset at `url`, mirrored under `cache_dir`: the current manifest and
    every index of the split staged, the shards not yet (SplitInfo.source stages them). Raises
    StorageError naming the URL, or ShardError for a manifest without the split."""
    root = mirror_root(url, cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = s3.get_bytes(client(opts), s3.join(url, INFO_NAME))  # every rank: it names the current sha256s
    atomic_write(root / INFO_NAME, manifest, durable=False)
    info = load_split(root, split, require_files=False)
    source = ShardSource(url, root, dict(info.sha256), opts)
    source.ensure_all(idx_path(f) for f in info.files)
    return dataclasses.replace(info, source=source)


def check_space(split: SplitInfo, cache_dir: str | Path) -> None:
    """StorageError naming data.cache_dir when its disk has less room than the split's shards
    still to stage (manifest sizes, `shard_bytes`; unknown sizes count as 0)."""
    source = split.source
    missing = sum(n for f, n in zip(split.files, split.shard_bytes) if not source.staged(f.name))
    free = shutil.disk_usage(source.root).free
    if missing > free:
        raise s3.StorageError(f"data.cache_dir {cache_dir}: {free / 2**30:.2f} GiB free, the {split.name} shards "
                              f"still to stage need {missing / 2**30:.2f} GiB: point it at a larger node-local "
                              "disk (the staged copy keeps every shard)")


def node_order(epoch_files: Callable[[int], tuple[list[str], list[int]]], epochs: int, ranks: range,
               world: int) -> list[str]:
    """The shards the node's `ranks` read, in the order they need them: epoch by epoch, the ranks'
    n-th shards side by side. `epoch_files(e)`: every shard of epoch e in reading order, with sample
    counts (pipeline/base.py's Loader.epoch_files)."""
    order: dict[str, None] = {}
    for epoch in range(epochs):
        files, lengths = epoch_files(epoch)
        shares = [[p.file for p in pieces_in_range(files, lengths, *rank_range(sum(lengths), r, world))]
                  for r in ranks]
        for row in itertools.zip_longest(*shares):
            order.update((f, None) for f in row if f is not None)
    order.update((f, None) for f in epoch_files(0)[0])  # then the rest: a later epoch may read any shard
    return list(order)


def stage_for_node(split: SplitInfo, order: list[str], cache_dir: str | Path) -> Transfers:
    """Start staging `split`'s shards in `order` in the background (the node's local rank 0 calls
    it); a loader waits for its rank's shards of an epoch before the epoch's first batch. Errors
    here are met again by the loader that needs the file (which then fetches it itself), so
    nothing here raises after the space check."""
    check_space(split, cache_dir)
    return Transfers(split.source.ensure, order, split.source.opts.workers)
