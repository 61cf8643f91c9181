"""The trainer end to end in subprocesses: run records, exact resume after a clean stop, SIGTERM
and SIGKILL, fine-tuning. Tiny: ResNet-18 at 32 px, DALI on the CPU over the `shards` fixture."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import REFERENCE, REFERENCE_ENV, assert_same_weights, final_state, steps_per_epoch

from model import ModelConfig, build_model
from pipeline.shards import load_split
from train import checkpoint as ckpt
from train.summary import loop_verdict

ENV, TINY = REFERENCE_ENV, REFERENCE  # every run here is the reference run, or a variant of it


@pytest.fixture(scope="module")
def steps(shards) -> int:
    return steps_per_epoch(shards)


@pytest.fixture(scope="module")
def data(shards):
    return f"data.path={shards}"


def cmd(data, run_dir, *extra):
    return [sys.executable, "-m", "train", *TINY, data, f"run_dir={run_dir}", *extra]


def train(data, run_dir, *extra, timeout=180):
    r = subprocess.run(cmd(data, run_dir, *extra), env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def reference(reference_run):
    """An uninterrupted 3-epoch run: (run_dir, its output)."""
    return reference_run


def test_run_records(reference, shards, steps):
    run_dir, out = reference
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 3 and summary["world_size"] == 1
    assert len(summary["img_per_s_per_epoch"]) == 3 and summary["mean_img_per_s"] > 0
    assert 0 <= summary["data_wait_fraction"] < 1
    assert summary["bottleneck"] == loop_verdict(summary["data_wait_fraction"])
    last = ckpt.NAME.match(ckpt.list_checkpoints(run_dir)[-1].name)
    assert sum(summary["data_wait_hist"].values()) == int(last[2]) == 3 * steps  # one count per step
    assert summary["peak_lr"] == pytest.approx(2.0 * 8 / 256)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["base_lr"] == 2.0 and saved["run_dir"] == str(run_dir)
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "provenance" and lines[0]["git_commit"] and lines[0]["torch"] == torch.__version__
    train_lines = [m for m in lines if m["kind"] == "train"]
    assert len(train_lines) == 3 * (steps // 2 + steps % 2)  # every 2 steps and at each epoch's end
    assert {"lr", "loss", "img_per_s", "data_ms", "compute_ms", "peak_mem_mb"} <= set(train_lines[0])
    epochs = [m for m in lines if m["kind"] == "epoch"]
    n_val = load_split(shards, "val").num_samples
    assert [m["val_count"] for m in epochs] == [m["val_expected"] for m in epochs] == [n_val] * 3
    assert [m["image_size"] for m in epochs] == [32, 32, 40]  # progressive resizing
    # best.pt holds the better of the model and its EMA, and says which
    scores = [(max(m["top1"], m["ema_top1"]), "ema" if m["ema_top1"] > m["top1"] else "model") for m in epochs]
    best = max(range(3), key=lambda i: (scores[i][0], -i))
    assert (summary["best_top1"], summary["best_weights"], summary["best_epoch"]) == (*scores[best], best)
    assert ckpt.load_checkpoint(run_dir / "best.pt")["selected_weights"] == scores[best][1]
    assert summary["final_top1"] == epochs[-1]["top1"] and summary["final_ema_top1"] == epochs[-1]["ema_top1"]
    weighted = sum(m["img_per_s"] * m["steps"] for m in epochs) / sum(m["steps"] for m in epochs)
    assert summary["mean_img_per_s"] == pytest.approx(weighted)
    assert "global batch 8 -> peak lr 0.0625" in out and "summary: 3 epochs" in out
    assert f"{summary['best_weights']} weights, epoch {best}: best.pt" in out
    assert final_state(run_dir)["config"] == saved


def test_exact_resume_after_clean_stop(data, reference, tmp_path, steps):
    out = train(data, tmp_path, "train.stop_after_epoch=1")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.checkpoint_name(1, steps)]
    assert not json.loads((tmp_path / "summary.json").read_text())["finished"]
    out = train(data, tmp_path)
    assert "resumed from" in out and f"epoch 1, step 0 of it, global step {steps}" in out
    assert_same_weights(final_state(reference[0]), final_state(tmp_path))


def start(data, run_dir):
    return subprocess.Popen(cmd(data, run_dir), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_checkpoints_mid_epoch_and_resumes_exactly(data, reference, tmp_path, steps):
    proc = start(data, tmp_path)
    lines = []
    for line in proc.stdout:  # SIGTERM mid-epoch 1, right after its second step
        lines.append(line)
        if line.startswith(f"epoch 1 step 2/{steps}"):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "".join(lines)
    out = "".join(lines)
    assert "stop requested: checkpointed at epoch" in out, out
    state = final_state(tmp_path)
    assert state["epoch"] == 1 and 3 <= state["step_in_epoch"] < steps, (state["epoch"], state["step_in_epoch"])
    out = train(data, tmp_path)
    assert f"step {state['step_in_epoch']} of it" in out
    assert_same_weights(final_state(reference[0]), final_state(tmp_path))


def test_sigkill_then_resume_auto_skips_partial_file(data, reference, tmp_path):
    proc = start(data, tmp_path)
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait(timeout=30)
    newest = ckpt.list_checkpoints(tmp_path)[-1]
    blob = newest.read_bytes()
    (tmp_path / ckpt.checkpoint_name(99, 9999)).write_bytes(blob[: len(blob) // 3])  # a torn write
    out = train(data, tmp_path)
    assert "warning: skipping checkpoint" in out and "ckpt-e0099" in out
    assert "resumed from" in out and (tmp_path / "ckpt-e0099-s00009999.pt.corrupt").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["finished"]
    assert_same_weights(final_state(reference[0]), final_state(tmp_path))


def test_explicit_bad_resume_path_exits_2(data, tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    r = subprocess.run(cmd(data, tmp_path / "run", f"checkpoint.resume={bad}"), env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "x.pt" in r.stderr.strip().splitlines()[-1], r.stderr


def test_resume_into_a_different_model_exits_2(data, reference, tmp_path):
    r = subprocess.run(cmd(data, tmp_path, f"checkpoint.resume={reference[0] / 'best.pt'}", "model.name=resnet34"),
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not fit resnet34" in r.stderr, r.stderr[-2000:]


def test_finetune_freezes_stages_and_replaces_head(data, tmp_path):
    torch.manual_seed(1)
    source = build_model(ModelConfig(name="resnet18", num_classes=1000)).state_dict()
    weights = tmp_path / "resnet18_tv.pth"
    torch.save(source, weights)
    out = train(data, tmp_path / "run", "train.epochs=1", f"train.finetune.weights={weights}",
                "train.finetune.freeze_stages=2", "profile=true")
    assert "fresh head: ['fc.bias', 'fc.weight']" in out
    state = final_state(tmp_path / "run")
    model = state["model"]
    assert model["fc.weight"].shape == (10, 512)
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.1.bn2.running_var"):
        assert torch.equal(model[k], source[k]), k  # frozen: weights and BN statistics
    assert not torch.equal(model["layer2.0.conv1.weight"], source["layer2.0.conv1.weight"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["peak_lr"] == pytest.approx(2.0 * 8 / 256 * 0.1)
    assert (tmp_path / "run" / "profile" / "trace-rank0.json").stat().st_size > 0


def test_distillation_from_the_reference_run(data, reference, tmp_path):
    teacher = reference[0] / "best.pt"
    out = train(data, tmp_path, "train.epochs=1", f"distill.teacher={teacher}", "distill.teacher_model=resnet18",
                "distill.alpha=0.7")
    assert f"distilling from {teacher} (resnet18" in out and "alpha 0.7, temperature 4.0" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finished"] and summary["teacher"] == str(teacher)


def test_a_missing_teacher_stops_before_any_work(data, tmp_path):
    r = subprocess.run(cmd(data, tmp_path / "run", f"distill.teacher={tmp_path / 'nope.pt'}"), env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nope.pt'}: no such teacher file " \
                                                     "(distill.teacher)", r.stderr
    assert not (tmp_path / "run").exists()
