"""The loaders: output format, labels, rank splits, exact validation counts, determinism, bad input."""

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from pipeline.config import DataConfig
from pipeline.dali import build_pipeline
from pipeline.loader import build_loader
from pipeline.shards import ShardError, format_idx, load_split

from shard_writer import TarIndexWriter

CPU = torch.device("cpu")
LOADERS = ["dali", "baseline"]


def cfg(shards, loader="dali", **kw) -> DataConfig:
    base = dict(path=str(shards), loader=loader, batch_size=16, image_size=48, val_image_size=48,
                num_threads=2, workers=2, shuffle_buffer=32)
    return DataConfig(**{**base, **kw})


def shard_labels(folder: Path, split: str) -> list[int]:
    info = load_split(folder, split)
    return [int(s["cls"]) for s in wds.WebDataset([str(f) for f in info.files], shardshuffle=False)]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_batch_format(shards, loader, split):
    it = build_loader(cfg(shards, loader), split, 0, 1, CPU).epoch(0)
    images, labels = next(it)
    assert images.shape == (16, 3, 48, 48) and images.dtype == torch.float16
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.shape == (16,) and 0 <= labels.min() and labels.max() < 10
    assert -3 < images.float().mean() < 3 and 0.2 < images.float().std() < 2  # normalized, not 0..255


@pytest.mark.parametrize("loader", LOADERS)
def test_pad_channels_gives_a_zero_fourth_channel(shards, loader):
    images, _ = next(build_loader(cfg(shards, loader, pad_channels=True), "val", 0, 1, CPU).epoch(0))
    assert images.shape == (16, 4, 48, 48) and images.is_contiguous(memory_format=torch.channels_last)
    assert images[:, 3].abs().max() == 0 and images[:, :3].abs().max() > 0


def test_dali_output_is_the_dali_buffer_not_a_copy(shards):
    pipe = build_pipeline(cfg(shards), [str(f) for f in load_split(shards, "val").files], 0, 1, None, 48, 0, "val")
    images, _, _ = pipe.run()
    t = images.as_tensor()
    x = torch.from_dlpack(t).permute(0, 3, 1, 2)
    assert x.data_ptr() == t.data_ptr() and x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("loader", LOADERS)
def test_val_labels_equal_shard_cls_in_order(shards, loader):
    got = torch.cat([y for _, y in build_loader(cfg(shards, loader, workers=1), "val", 0, 1, CPU).epoch(0)])
    assert got.tolist() == shard_labels(shards, "validation")


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_val_counts_every_image_once(shards, loader, world):
    n = load_split(shards, "validation").num_samples
    assert n % (world * 16) != 0  # the case that padding would get wrong
    counts = []
    for rank in range(world):
        v = build_loader(cfg(shards, loader), "val", rank, world, CPU)
        batches = [len(y) for _, y in v.epoch(0)]
        assert len(batches) == len(v) and sum(batches) == v.num_samples
        counts.append(sum(batches))
    assert sum(counts) == n


def test_ranks_read_disjoint_samples_covering_the_dataset(shards):
    files = [str(f) for f in load_split(shards, "train").files]
    keys = []
    for rank in range(2):
        pipe = build_pipeline(cfg(shards, batch_size=1), files, rank, 2, None, 48, 0, "read")
        n = pipe.reader_meta()["reader"]["epoch_size"]
        start, end = n * rank // 2, n * (rank + 1) // 2
        keys.append({bytes(pipe.run()[2].as_array()[0]).decode() for _ in range(start, end)})
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == load_split(shards, "train").num_samples
    lens = {len(build_loader(cfg(shards, loader), "train", r, 2, CPU)) for r in range(2) for loader in LOADERS}
    assert lens == {205 // 2 // 16}


def test_dali_is_deterministic_per_seed_and_epoch(shards):
    def first(seed, epoch):
        return next(build_loader(cfg(shards, seed=seed), "train", 0, 1, CPU).epoch(epoch))
    a, b = first(0, 0), first(0, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], first(0, 1)[0]) and not torch.equal(a[0], first(1, 0)[0])


@pytest.mark.parametrize("loader", LOADERS)
def test_crop_size_changes_between_epochs(shards, loader):
    train = build_loader(cfg(shards, loader), "train", 0, 1, CPU)
    assert next(train.epoch(0))[0].shape[-1] == 48
    train.set_image_size(32)
    assert next(train.epoch(1))[0].shape[-2:] == (32, 32)


def test_shards_without_index_and_timm_layout(shards, tmp_path):
    timm = tmp_path / "timm"
    timm.mkdir()
    for f in shards.glob("*.tar"):
        shutil.copy(f, timm / f.name)  # no .idx, no _info.json: found by name, classes from config
    train = build_loader(cfg(timm), "train", 0, 1, CPU, num_classes=10)
    assert len(train) == 205 // 16 - (2 // 16)  # 203 readable samples
    got = torch.cat([y for _, y in build_loader(cfg(timm), "val", 0, 1, CPU, num_classes=10).epoch(0)])
    assert got.tolist() == shard_labels(shards, "validation")


# --- bad input -------------------------------------------------------------------------------

def _jpg() -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(b, "JPEG")
    return b.getvalue()


def make_shard(out: Path, samples, index=True) -> Path:
    """One train shard (+ index, + _info.json with 2 classes) from (key, [(ext, bytes)]) pairs."""
    out.mkdir()
    with open(out / "x-train-000000.tar", "wb") as f:
        w = TarIndexWriter(f)
        for key, files in samples:
            w.add_sample(key, files)
        w.close()
    if index:
        (out / "x-train-000000.idx").write_text(format_idx(w.samples))
    split = {"name": "train", "filenames": ["x-train-000000.tar"], "shard_lengths": [len(samples)]}
    (out / "_info.json").write_text(json.dumps({"classes": ["a", "b"], "splits": {"train": split}}))
    return out


GOOD = [(f"k{i}", [("jpg", _jpg()), ("cls", b"1")]) for i in range(8)]
BAD = {
    "corrupt jpg": ([("jpg", _jpg()[:120]), ("cls", b"0")], "kbad: jpg does not decode"),
    "not an image": ([("jpg", b"hello" * 20), ("cls", b"0")], "kbad: jpg does not decode"),
    "missing cls": ([("jpg", _jpg())], "kbad has no cls"),
    "label out of range": ([("jpg", _jpg()), ("cls", b"7")], "kbad: cls '7' is out of range"),
    "label not an integer": ([("jpg", _jpg()), ("cls", b"dog")], "kbad: cls 'dog' is not"),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sample_names_shard_and_key(tmp_path, loader, case):
    files, needle = BAD[case]
    out = make_shard(tmp_path / "d", GOOD[:3] + [("kbad", files)] + GOOD[3:])
    with pytest.raises(ShardError, match=needle) as e:
        for _ in build_loader(cfg(out, loader, batch_size=4, workers=1), "train", 0, 1, CPU).epoch(0):
            pass
    assert "x-train-000000" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("index", [True, False])
def test_truncated_shard_is_named(tmp_path, index):
    out = make_shard(tmp_path / "d", GOOD, index=index)
    tar = out / "x-train-000000.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    with pytest.raises(ShardError, match="x-train-000000.tar: truncated"):
        for _ in build_loader(cfg(out, batch_size=4), "train", 0, 1, CPU).epoch(0):
            pass


def test_tampered_index_is_named(tmp_path):
    out = make_shard(tmp_path / "d", GOOD)
    idx = out / "x-train-000000.idx"
    lines = idx.read_text().splitlines()
    offset = lines[2].split()[1]
    lines[2] = lines[2].replace(f"jpg {offset} ", f"jpg {int(offset) + 512} ", 1)
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ShardError, match="x-train-000000.idx: sample k1 does not match"):
        for _ in build_loader(cfg(out, batch_size=4), "train", 0, 1, CPU).epoch(0):
            pass


def test_shards_without_jpg_or_cls(tmp_path):
    out = make_shard(tmp_path / "d", [(f"k{i}", [("png", _jpg()), ("txt", b"1")]) for i in range(8)])
    with pytest.raises(ShardError, match="k0 has no jpg"):
        build_loader(cfg(out, batch_size=4), "train", 0, 1, CPU)


def test_missing_paths_and_bad_config(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match="nope"):
        build_loader(cfg(tmp_path / "nope"), "train", 0, 1, CPU)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no shards"):
        build_loader(cfg(tmp_path / "empty"), "train", 0, 1, CPU)
    with pytest.raises(ValueError, match="data.batch_size"):
        build_loader(cfg(shards, batch_size=500), "train", 0, 1, CPU)
    with pytest.raises(ValueError, match="ranks but only"):
        build_loader(cfg(shards), "val", 0, 51, CPU)
    with pytest.raises(ValueError, match="data.loader"):
        build_loader(cfg(shards, loader="fast"), "train", 0, 1, CPU)


@pytest.mark.gpu
def test_dali_gpu_batch_is_on_the_gpu(shards):
    dev = torch.device("cuda", 0)
    images, labels = next(build_loader(cfg(shards), "train", 0, 1, dev).epoch(0))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.float16
    assert images.is_contiguous(memory_format=torch.channels_last)
    cpu_images, _ = next(build_loader(cfg(shards), "val", 0, 1, CPU).epoch(0))
    gpu_images, _ = next(build_loader(cfg(shards), "val", 0, 1, dev).epoch(0))
    assert (gpu_images.float().cpu() - cpu_images.float()).abs().mean() < 0.1  # same pipeline, two decoders
