"""Tiny ImageNet-scale shards (tools/make_tiny_shards.py) and the start-up benchmark (benchmarks/startup.py)."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from conftest import run_python
from PIL import Image

from benchmarks import startup
from pipeline.config import DataConfig
from pipeline.loader import build_loader
from pipeline.shards import format_idx, idx_path, load_split, read_idx
from tools.make_tiny_shards import make_tiny_shards, ustar_header
from tools.shard_writer import TarIndexWriter

SIZE = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "shards"
    make_tiny_shards(out, samples=2000, shards=8, classes=10, val_samples=100, size=SIZE, workers=2)
    return out


def tar_samples(path: Path) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(ext, data), ...]) per sample, read with Python's tarfile (which checks checksums)."""
    out = []
    with tarfile.open(path) as tf:
        for ti in tf:
            key, ext = ti.name.split(".", 1)
            if not out or out[-1][0] != key:
                out.append((key, []))
            out[-1][1].append((ext, tf.extractfile(ti).read()))
    return out


def test_headers_are_tarfiles():
    for name, size in [("a.jpg", 0), ("train_00000001.cls", 3), ("x" * 99, 8**11 - 1)]:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, 0o644, "", ""
        assert ustar_header(name.encode(), size) == ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def test_manifest_and_shards_equal_the_reference_writer(tiny):
    info = json.loads((tiny / "_info.json").read_text())
    train, val = info["splits"]["train"], info["splits"]["validation"]
    assert train["filenames"] == [f"imagenet1k-train-{i:06d}.tar" for i in range(8)]
    assert train["shard_lengths"] == [250] * 8 and val["shard_lengths"] == [100]
    assert len(info["classes"]) == info["num_classes"] == 10 and info["classes"] == sorted(info["classes"])
    keys, labels = set(), []
    for split in (train, val):
        for name, n, nbytes, sha in zip(split["filenames"], split["shard_lengths"], split["shard_bytes"],
                                        split["shard_sha256"]):
            raw = (tiny / name).read_bytes()
            assert (len(raw), hashlib.sha256(raw).hexdigest()) == (nbytes, sha)
            samples = tar_samples(tiny / name)
            assert len(samples) == n and all([e for e, _ in files] == ["jpg", "cls"] for _, files in samples)
            # the project's own tar writer, given the same members, writes the same bytes and index
            buf = io.BytesIO()
            w = TarIndexWriter(buf)
            for key, files in samples:
                w.add_sample(key, files)
            w.close()
            assert buf.getvalue() == raw
            assert idx_path(tiny / name).read_text() == format_idx(w.samples)
            keys |= {k for k, _ in samples}
            labels += [int(files[1][1]) for _, files in samples]
    assert len(keys) == 2100 and set(labels) == set(range(10))  # unique keys; every class drawn
    key, files = tar_samples(tiny / train["filenames"][3])[7]
    assert Image.open(io.BytesIO(files[0][1])).size == (SIZE, SIZE)


def test_index_is_what_wds2idx_writes(tiny, tmp_path):
    wds2idx = Path(sys.executable).parent / "wds2idx"
    if not wds2idx.exists():
        pytest.skip("no wds2idx beside this python (DALI's tool)")
    tar = tiny / "imagenet1k-train-000005.tar"
    subprocess.run([str(wds2idx), str(tar), str(tmp_path / "x.idx")], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "x.idx").read_bytes() == idx_path(tar).read_bytes()


def test_webdataset_and_dali_read_every_sample(tiny):
    info = load_split(tiny, "validation")
    expected = [int(files[1][1]) for f in info.files for _, files in tar_samples(f)]
    got = [int(s["cls"]) for s in wds.WebDataset([str(f) for f in info.files], shardshuffle=False)]
    assert got == expected
    cfg = DataConfig(path=str(tiny), batch_size=32, image_size=SIZE, val_image_size=SIZE, num_threads=2,
                     shuffle_buffer=64)
    val = build_loader(cfg, "val", 0, 1, torch.device("cpu"))
    assert torch.cat([y for _, y in val.epoch(0)]).tolist() == expected  # DALI decoded all 100, in order
    train = build_loader(cfg, "train", 0, 1, torch.device("cpu"))
    n, seen = 0, set()
    for x, y in train.epoch(0):
        assert x.shape == (32, 3, SIZE, SIZE) and torch.isfinite(x).all()
        n, seen = n + len(y), seen | set(y.tolist())
    assert n == 2000 // 32 * 32 and seen <= set(range(10)) and len(seen) == 10
    assert sum(len(read_idx(idx_path(f))) for f in train.split.files) == 2000


def test_turnover_is_the_boundary_gap_less_the_median_interval():
    t = {"start": 0.0, "first": [2.0, 13.0], "last": [10.0, 20.0], "intervals": [1.0, 1.0, 3.0],
         "images": [8, 8], "rss_mb": [100.0, 101.0]}
    r = startup.figures(t, {"imports": startup.T_MODULE + 1.0, "cuda_start": startup.T_MODULE + 1.5,
                            "build_loader": startup.T_MODULE + 3.0})
    assert r["epoch_s"] == [10.0, 10.0] and r["turnover_s"] == [13.0 - 10.0 - 1.0]
    assert r["img_per_s"] == 16 / 20.0
    assert list(r["phases_s"]) == ["interpreter", "imports", "cuda_start", "build_loader", "first_batch"]
    assert [r["phases_s"][k] for k in ("imports", "cuda_start", "build_loader", "first_batch")] == pytest.approx(
        [1.0, 0.5, 1.5, 2.0])


def test_first_batch_counts_from_process_start():
    code = "import time; time.sleep(0.5); from benchmarks.startup import T_START, T_MODULE; print(T_MODULE - T_START)"
    out = run_python("-c", code, timeout=60)
    assert out.returncode == 0 and 0.45 <= float(out.stdout) < 5, out.stderr  # the sleep before the import is counted


@pytest.mark.parametrize(("loader", "rank", "world"), [("dali", 1, 3), ("baseline", 0, 1)])
def test_startup_benchmark_writes_every_figure(tiny, tmp_path, loader, rank, world):
    out = tmp_path / "s.json"
    r = run_python("-m", "benchmarks.startup", "--data", tiny, "--device", "cpu", "--loader", loader,
                   "--image-size", SIZE, "--batch-size", 64, "--epochs", 3, "--threads", 2, "--rank", rank,
                   "--world", world, "--json", out, threads=None, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = json.loads(out.read_text())
    info = json.loads((tiny / "_info.json").read_text())["splits"]["train"]
    n, (per_shard,) = sum(info["shard_lengths"]), set(info["shard_lengths"])  # equal shards: any order
    a, b = n * rank // world, n * (rank + 1) // world
    assert r["samples"] == b - a and r["shards"] == len(info["filenames"])
    assert r["rank_shards"] == sum(k * per_shard < b and (k + 1) * per_shard > a for k in range(r["shards"]))
    batches = n // world // 64  # the smallest rank's
    assert r["batches_per_epoch"] == batches and r["images_per_epoch"] == [batches * 64] * 3
    assert len(r["epoch_s"]) == len(r["rss_mb"]) == 3 and len(r["turnover_s"]) == 2
    assert all(s > 0 for s in r["epoch_s"]) and all(m > 50 for m in r["rss_mb"])
    assert r["img_per_s"] == pytest.approx(sum(r["images_per_epoch"]) / sum(r["epoch_s"]))
    assert r["first_batch_s"] == pytest.approx(sum(r["phases_s"].values()), abs=0.02)
    assert min(r["phases_s"].values()) >= 0 and r["phases_s"]["imports"] > 0
    assert "cuda_start" not in r["phases_s"]  # a CPU run starts no CUDA
    assert r["gpu_memory"] == {"torch_peak_allocated_mb": None, "device_used_mb": None}  # not zeros
    assert r["provenance"]["git_commit"] and r["provenance"]["device"] == "cpu"
