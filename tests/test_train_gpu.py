"""The GPU paths (skipped without CUDA), with each loader (DALI's `mixed` decode, or the baseline
where DALI is missing): bf16 / fp16 + fused SGD with GradScaler, 4 input channels, torch.compile
and CUDA graphs; each must train and count every validation image once. Each rank's GPU RNG."""

import json

import pytest
import torch
from conftest import restored_process_state, train

from pipeline.shards import load_split
from train.config import load_config
from train.trainer import set_determinism

RUNS = {"bf16": ["train.amp=bf16"], "fp16": ["train.amp=fp16"], "4-channels": ["data.pad_channels=true",
         "model.in_channels=4"], "compile": ["train.compile=default"], "cuda-graphs": ["train.compile=reduce-overhead"]}


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("extra", RUNS.values(), ids=RUNS.keys())
@pytest.mark.parametrize("loader", ["baseline", "dali"])
def test_gpu_run(shards, tmp_path, loader, extra):
    if loader == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed (tier 1 of the GPU check runs without it)")
    r = train([f"data.loader={loader}", f"data.path={shards}", "data.batch_size=16", "data.image_size=64",
               "data.val_image_size=64", "model.name=resnet50", "model.num_classes=10", "train.epochs=2",
               "optim.warmup_epochs=1", "train.log_every=4", "optim.ema_decay=0.99", f"run_dir={tmp_path}", *extra],
              threads=None, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "device cuda:0" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finished"] and summary["mean_img_per_s"] > 0
    epochs = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    n_val = load_split(shards, "val").num_samples
    assert [m["val_count"] for m in epochs if m["kind"] == "epoch"] == [n_val, n_val]


@pytest.mark.gpu
def test_each_rank_has_its_own_gpu_rng_and_the_same_host_one():
    cfg = load_config(None)
    draws = []
    with restored_process_state():  # set_determinism reseeds and sets backends for the whole process
        for rank in (0, 1, 0):
            set_determinism(cfg, rank)
            draws.append((torch.rand(4), torch.rand(4, device="cuda").cpu()))
    (host0, gpu0), (host1, gpu1), (host0_again, gpu0_again) = draws
    assert torch.equal(host0, host1)  # the model's init is the same on every rank
    assert not torch.equal(gpu0, gpu1)  # dropout masks are not
    assert torch.equal(gpu0, gpu0_again)  # and a rank's stream depends only on (seed, rank)
