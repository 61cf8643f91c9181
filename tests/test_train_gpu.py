"""The GPU paths (skipped without CUDA): DALI mixed decode, bf16 / fp16 + fused SGD with
GradScaler, torch.compile; each must train and count every validation image once."""

import json

import pytest
from conftest import train

from pipeline.shards import load_split


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["train.amp=bf16"], ["train.amp=fp16"], ["train.compile=default"], ["train.compile=reduce-overhead"],
    ["data.pad_channels=true", "model.in_channels=4"]], ids=["bf16", "fp16", "compile", "cuda-graphs", "4-channels"])
def test_gpu_run(shards, tmp_path, extra):
    r = train(["data.loader=dali", f"data.path={shards}", "data.batch_size=16", "data.image_size=64",
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
