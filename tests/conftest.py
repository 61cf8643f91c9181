"""Shared fixtures: a small synthetic ImageNet and its shards, made once per test session."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))  # the scripts' modules (tools/ is not a package)
# For subprocesses: the project first, then whatever the caller had (the GPU machine's .devsite/).
PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import make_synthetic_imagenet  # noqa: E402
import shard_imagenet  # noqa: E402


def assert_same_weights(a: dict, b: dict) -> None:
    """Two checkpoints at the same step with the same model and EMA weights (max abs diff <= 1e-6)."""
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for part in ("model", "ema"):
        for k, v in a[part].items():
            if v.is_floating_point():
                diff = (v - b[part][k]).abs().max().item()
                assert diff <= 1e-6, f"{part}.{k} differs by {diff}"
            else:
                assert torch.equal(v, b[part][k]), f"{part}.{k}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """10 classes x 20 train (+ the 5 oddities), 5 val per class (flat + CSV), with archives."""
    out = tmp_path_factory.mktemp("syn") / "imagenet"
    return make_synthetic_imagenet.make_dataset(out, oddities=True, archives=True, workers=2)


@pytest.fixture(scope="session")
def shards(synthetic, tmp_path_factory):
    """The synthetic dataset sharded at 40 samples per shard (train: 6 shards, val: 2)."""
    out = tmp_path_factory.mktemp("shards") / "out"
    rc = shard_imagenet.main(["--src", str(synthetic.root), "--out", str(out),
                              "--samples-per-shard", "40", "--workers", "2"])
    assert rc == 0
    return out
