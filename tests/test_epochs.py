"""Epochs back to back: the next epoch's pipeline is built ahead without changing what it yields,
validation reuses one pipeline, a resumed epoch skips the batches already done, one label parser."""

import shutil

import numpy as np
import pytest
import torch
from conftest import shard_labels

from pipeline.config import DataConfig
from pipeline.labels import parse_cls, parse_labels
from pipeline.loader import build_loader
from pipeline.shards import ShardError

CPU = torch.device("cpu")


def cfg(shards, loader="dali", **kw) -> DataConfig:
    base = dict(path=str(shards), loader=loader, batch_size=16, image_size=32, val_image_size=32,
                num_threads=1, workers=2, shuffle_buffer=32)
    return DataConfig(**{**base, **kw})


def epoch_batches(loader, epoch, skip=0, position=None) -> list:
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, skip=skip, position=position)]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_dali_epoch_built_ahead_yields_what_a_fresh_build_does(shards):
    loader = build_loader(cfg(shards), "train", 0, 1, CPU,
                          size_at=lambda epoch: 32 if epoch == 0 else 40)  # a resize boundary between them
    first = epoch_batches(loader, 0)
    assert loader._ahead is not None and loader._ahead[:2] == (1, 40)  # epoch 1 was started during epoch 0
    ahead = epoch_batches(loader, 1)
    fresh = build_loader(cfg(shards), "train", 0, 1, CPU, size_at=lambda epoch: 40)
    assert_same_batches(ahead, epoch_batches(fresh, 1))
    assert ahead[0][0].shape[-1] == 40 and first[0][0].shape[-1] == 32
    assert not torch.equal(first[0][1], ahead[0][1])  # another epoch, another order


@pytest.mark.parametrize("loader_name", ["dali", "baseline"])
def test_validation_reuses_its_pipeline_and_yields_the_same_batches(shards, loader_name):
    val = build_loader(cfg(shards, loader_name), "val", 0, 1, CPU)
    once, twice = epoch_batches(val, 0), epoch_batches(val, 1)
    assert_same_batches(once, twice)
    assert sum(len(y) for _, y in once) == val.num_samples
    if loader_name == "dali":
        assert len(val._val) == 1  # built once, reused by the second evaluation


@pytest.mark.parametrize("index", [True, False])
def test_every_rank_evaluates_the_same_samples_each_time(shards, tmp_path, index):
    """3 ranks, 16 per batch: rank 0's share (16 of 50) is a whole number of batches, and DALI's
    own sharding (used where shards have no index) pads it to rank 1's 17, a batch of padding that
    must not start the next evaluation. Every evaluation gives each rank its samples in order."""
    data = shards
    if not index:
        data = tmp_path / "noidx"
        shutil.copytree(shards, data, ignore=shutil.ignore_patterns("*.idx"))
    expected = shard_labels(data, "val")
    got = []
    for rank in range(3):
        val = build_loader(cfg(data), "val", rank, 3, CPU)
        a, b = epoch_batches(val, 0), epoch_batches(val, 1)
        assert_same_batches(a, b)
        got += torch.cat([y for _, y in a]).tolist()
    assert len(expected) % 3 and (len(expected) // 3) % 16 == 0  # the case above
    assert got == expected


@pytest.mark.parametrize("loader_name", ["dali", "baseline"])
@pytest.mark.parametrize("skip", [1, 3])
def test_a_resumed_epoch_gives_the_remaining_batches(shards, loader_name, skip):
    loader = build_loader(cfg(shards, loader_name), "train", 0, 1, CPU)
    whole = epoch_batches(loader, 2)
    resumed = build_loader(cfg(shards, loader_name), "train", 0, 1, CPU)
    assert_same_batches(epoch_batches(resumed, 2, skip=skip), whole[skip:])


def test_dali_resumes_from_its_saved_position(shards):
    """A stop after 3 batches saves DALI's checkpoint; a new loader built from it continues with
    batch 3 without reading batches 0-2 again (the reader and the RNGs are restored, not replayed)."""
    loader = build_loader(cfg(shards), "train", 0, 1, CPU)
    batches = loader.epoch(2)
    for _ in range(3):
        next(batches)
    position = loader.position()
    rest = [(x.clone(), y.clone()) for x, y in batches]
    assert isinstance(position, bytes) and loader.position() is None  # the epoch is over
    resumed = build_loader(cfg(shards), "train", 0, 1, CPU)
    assert_same_batches(epoch_batches(resumed, 2, skip=3, position=position), rest)


def test_one_label_rule_for_every_reader():
    rows = [b" 1", b"1 ", b"7\n", b"0012", b"3\0\0"]
    width = max(map(len, rows))
    padded = np.array([list(r.ljust(width, b"\0")) for r in rows], dtype=np.uint8)  # as DALI pads them
    batch = parse_labels(padded, 20, lambda i: f"sample {i}").tolist()
    assert batch == [parse_cls(r, 20, "x") for r in rows] == [1, 1, 7, 12, 3]
    for bad in (b"1 2", b"-1", b"", b"x1", b"1.0"):
        with pytest.raises(ShardError, match="is not a non-negative integer"):
            parse_cls(bad, 20, "x")
    with pytest.raises(ShardError, match="sample 1: cls '25' is out of range for 20 classes"):
        parse_labels(np.array([list(b"3 "), list(b"25")], dtype=np.uint8), 20, lambda i: f"sample {i}")
