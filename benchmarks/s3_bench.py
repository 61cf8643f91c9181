"""Shards from object storage: staged whole (pipeline/stage.py) against DALI reading `s3://` itself,
against local files, on a real S3 server on localhost (tools/local_s3.py) with latency added by
a delay proxy (benchmarks/delay_proxy.py). Request counts come from the server's log.

    python -m benchmarks.s3_bench [--samples 4096 --shards 16 --delays 0,10 --out results.json]

Measures, per added latency:
- read stage alone (DALI's webdataset reader, no decode), samples/s: local files; DALI reading
  s3:// directly (indexes local, as the loader gives them); staging the split (cold cache),
  then reading the staged files;
- GETs per sample of each;
- the DALI CPU training loader (build_loader): first-batch time and steady img/s from local files
  and from s3:// staged into an empty cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from benchmarks.common import one_line_errors, write_json
from benchmarks.delay_proxy import delay_proxy
from pipeline import stage
from pipeline.config import DataConfig
from pipeline.loader import build_loader
from pipeline.shards import idx_path, load_split
from tools import local_s3, make_tiny_shards, upload_shards

URL = "s3://bench/shards"


def read_rate(paths: list[str], index_paths: list[str], samples: int, batch: int) -> tuple[float, float]:
    """(Seconds to the first batch, samples/s over the rest) of DALI's webdataset reader alone
    (CPU) over `paths` (local or s3://), one pass."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch, num_threads=2, device_id=None, prefetch_queue_depth=1)
    def reader():
        jpg, cls = fn.readers.webdataset(paths=paths, index_paths=index_paths, ext=["jpg", "cls"],
                                         missing_component_behavior="error", name="r")
        return jpg, cls

    t0 = time.perf_counter()
    pipe = reader()
    pipe.build()
    pipe.run()
    first = time.perf_counter() - t0
    steps = max(1, samples // batch - 1)
    t1 = time.perf_counter()
    for _ in range(steps):
        pipe.run()
    rate = steps * batch / (time.perf_counter() - t1)
    del pipe
    return first, rate


def loader_rate(cfg: DataConfig, steps: int) -> tuple[float, float]:
    """(Seconds from build_loader to the first batch, img/s over the next `steps`) of the DALI
    CPU training loader."""
    t0 = time.perf_counter()
    loader = build_loader(cfg, "train", 0, 1, torch.device("cpu"), epochs=1)
    it = iter(loader.epoch(0))
    next(it)
    first = time.perf_counter() - t0
    steps = min(steps, len(loader) - 1)
    t1 = time.perf_counter()
    for _ in range(steps):
        next(it)
    return first, steps * cfg.batch_size / (time.perf_counter() - t1)


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4096, help="train samples in the test set")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="image side, px")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="loader steps timed after the first batch")
    p.add_argument("--delays", default="0,10", help="added latency per request, ms (comma list)")
    p.add_argument("--out", help="write the results here as JSON")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp, ExitStack() as stack:
        tmp = Path(tmp)
        make_tiny_shards.make_tiny_shards(tmp / "local", a.samples, a.shards, classes=10, size=a.size, workers=2)
        server = stack.enter_context(local_s3.local_s3(tmp / "served", tmp / "rclone.log"))
        os.environ.update(server.env())
        (server.root / "bench").mkdir()
        upload_shards.upload_folder(tmp / "local", URL, workers=4)
        split = load_split(tmp / "local", "train")
        local_paths = [str(f) for f in split.files]
        idx = [str(idx_path(f)) for f in split.files]
        first, rate = read_rate(local_paths, idx, a.samples, a.batch)
        rows.append({"case": "local files", "delay_ms": None, "first_s": first, "samples_per_s": rate})
        cfg = DataConfig(path=str(tmp / "local"), loader="dali", batch_size=a.batch, image_size=a.size,
                         num_threads=2, seed=0)
        first, rate = loader_rate(cfg, a.steps)
        rows.append({"case": "loader, local files", "delay_ms": None, "first_s": first, "img_per_s": rate})
        port = 0  # DALI keeps the endpoint of its first S3 request: every delay's proxy takes its port
        for n, delay in enumerate(float(d) for d in a.delays.split(",")):
            with delay_proxy(("127.0.0.1", server.port), delay, port) as port:
                os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
                s3_paths = [f"{URL}/{f.name}" for f in split.files]
                g0 = server.gets()
                first, rate = read_rate(s3_paths, idx, a.samples, a.batch)
                rows.append({"case": "DALI reads s3:// directly", "delay_ms": delay, "first_s": first,
                             "samples_per_s": rate, "gets_per_sample": (server.gets() - g0) / a.samples})
                g0, t0 = server.gets(), time.perf_counter()
                info = stage.open_split(URL, tmp / f"cache{n}", "train")
                info.source.ensure_all(info.files)
                stage_s = time.perf_counter() - t0
                gets = server.gets() - g0
                first, rate = read_rate([str(f) for f in info.files], [str(idx_path(f)) for f in info.files],
                                        a.samples, a.batch)
                rows.append({"case": "staged whole, then read", "delay_ms": delay, "stage_s": stage_s,
                             "first_s": first, "samples_per_s": rate, "gets_per_sample": gets / a.samples,
                             "samples_per_s_incl_staging": a.samples / (stage_s + first + a.samples / rate)})
                cfg = DataConfig(path=URL, cache_dir=str(tmp / f"lcache{n}"), loader="dali", batch_size=a.batch,
                                 image_size=a.size, num_threads=2, seed=0)
                first, rate = loader_rate(cfg, a.steps)
                rows.append({"case": "loader, s3:// staged (empty cache)", "delay_ms": delay, "first_s": first,
                             "img_per_s": rate})
                os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    for r in rows:
        print(json.dumps(r))
    write_json(a.out, {"args": vars(a), "rows": rows}, torch.device("cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
