"""Two CPU processes under torchrun (gloo): DDP trains, and the exact evaluation counts every
validation image once (50 images over 2 ranks x batch 8: not a multiple of 16)."""

import json

import pytest
from conftest import run_python, steps_per_epoch

from pipeline.shards import load_split


@pytest.mark.slow
def test_torchrun_two_processes_count_each_val_image_once(shards, tmp_path):
    run_dir = tmp_path / "run"
    args = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "train",
            "data.loader=dali", f"data.path={shards}", "data.batch_size=8", "data.num_threads=1",
            "data.image_size=32", "data.val_image_size=32", "model.name=resnet18", "model.num_classes=10",
            "train.epochs=2", "train.log_every=4", "optim.warmup_epochs=0.5", "optim.base_lr=0.32",
            f"run_dir={run_dir}"]
    outs = []
    for extra in (["train.stop_after_epoch=1"], []):  # stop after epoch 0, then resume on both ranks
        r = run_python(*args, *extra, threads=1, timeout=300)
        outs.append(r.stdout + r.stderr)
        assert r.returncode == 0, outs[-1][-4000:]
    steps = steps_per_epoch(shards, ranks=2)  # the smaller rank's full batches of 8
    assert "resumed from" in outs[1] and f"epoch 1, step 0 of it, global step {steps}" in outs[1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2 and summary["global_batch"] == 16
    assert summary["peak_lr"] == 0.32 * 16 / 256  # lr scales with the global batch
    epochs = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in epochs if m["kind"] == "epoch"]
    n_val = load_split(shards, "val").num_samples
    assert [(m["val_count"], m["val_expected"]) for m in epochs] == [(n_val, n_val)] * 2
    out = "".join(outs)
    assert out.count("eval epoch 1 (model): top-1") == 1  # rank 0 alone logs
    assert f"over {n_val} images (split has {n_val})" in out and "COUNT MISMATCH" not in out
    assert f"{steps} steps/epoch" in out
