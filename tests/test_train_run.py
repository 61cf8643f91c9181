"""The trainer end to end: run records, exact resume after a clean stop, SIGTERM and SIGKILL,
fine-tuning, distillation (in subprocesses, marked slow); which weights best.pt keeps, and errors
that stop a run before any work (its main(), in this process). Tiny: ResNet-18 at 32 px, DALI on
the CPU over the `shards` fixture, or the synthetic loader."""

import json
import signal
import time

import pytest
import torch
import yaml
from conftest import (
    REFERENCE,
    SYNTH,
    assert_same_weights,
    call_main,
    final_state,
    make_state,
    ok,
    started,
    steps_per_epoch,
    train,
)

from model import ModelConfig, build_model
from pipeline.shards import load_split
from train import checkpoint as ckpt
from train import trainer as trainer_mod
from train.summary import loop_verdict, summarize


@pytest.fixture(scope="module")
def steps(shards) -> int:
    return steps_per_epoch(shards)


@pytest.fixture(scope="module")
def data(shards):
    return f"data.path={shards}"


def args(data, run_dir, *extra) -> list[str]:
    """The reference run's arguments (every run here is the reference run, or a variant of it)."""
    return [*REFERENCE, data, f"run_dir={run_dir}", *extra]


def train_ok(data, run_dir, *extra) -> str:
    return ok(train(args(data, run_dir, *extra), timeout=180))


@pytest.fixture(scope="module")
def reference(reference_run):
    """An uninterrupted 3-epoch run: (run_dir, its output)."""
    return reference_run


@pytest.mark.slow
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
    # best.pt, the summary and the epoch record agree (which one is best: test_best_pt_keeps_...)
    best = ckpt.load_checkpoint(run_dir / "best.pt")
    weights, epoch = summary["best_weights"], summary["best_epoch"]
    assert (best["selected_weights"], best["best"]["epoch"], best["best"]["top1"]) == (weights, epoch,
                                                                                        summary["best_top1"])
    assert summary["best_top1"] == epochs[epoch]["top1" if weights == "model" else "ema_top1"]
    assert summary["final_top1"] == epochs[-1]["top1"] and summary["final_ema_top1"] == epochs[-1]["ema_top1"]
    rates = [m["img_per_s"] for m in epochs]  # the mean's weighting: test_summary_weights_...
    assert min(rates) <= summary["mean_img_per_s"] <= max(rates)
    assert "global batch 8 -> peak lr 0.0625" in out and "summary: 3 epochs" in out
    assert f"{weights} weights, epoch {epoch}: best.pt" in out
    assert final_state(run_dir)["config"] == saved


@pytest.mark.slow
def test_exact_resume_after_clean_stop(data, reference, tmp_path, steps):
    out = train_ok(data, tmp_path, "train.stop_after_epoch=1")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.checkpoint_name(1, steps)]
    assert not json.loads((tmp_path / "summary.json").read_text())["finished"]
    out = train_ok(data, tmp_path)
    assert "resumed from" in out and f"epoch 1, step 0 of it, global step {steps}" in out
    assert_same_weights(final_state(reference[0]), final_state(tmp_path))


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_and_resumes_exactly(data, reference, tmp_path, steps):
    lines = []
    with started("-m", "train", *args(data, tmp_path)) as proc:
        for line in proc.stdout:  # SIGTERM mid-epoch 1, right after its second step
            lines.append(line)
            if line.startswith(f"epoch 1 step 2/{steps}"):
                proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 0, "".join(lines)
    out = "".join(lines)
    assert "stop requested: checkpointed at epoch" in out, out
    state = final_state(tmp_path)
    assert state["epoch"] == 1 and 3 <= state["step_in_epoch"] < steps, (state["epoch"], state["step_in_epoch"])
    out = train_ok(data, tmp_path)
    assert f"step {state['step_in_epoch']} of it" in out
    assert_same_weights(final_state(reference[0]), final_state(tmp_path))


@pytest.mark.slow
def test_sigkill_then_resume_auto_skips_partial_file(data, reference, tmp_path):
    with started("-m", "train", *args(data, tmp_path)) as proc:
        while not ckpt.list_checkpoints(tmp_path) and proc.poll() is None:
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
    newest = ckpt.list_checkpoints(tmp_path)[-1]
    blob = newest.read_bytes()
    (tmp_path / ckpt.checkpoint_name(99, 9999)).write_bytes(blob[: len(blob) // 3])  # a torn write
    out = train_ok(data, tmp_path)
    assert "warning: skipping checkpoint" in out and "ckpt-e0099" in out
    assert "resumed from" in out and (tmp_path / "ckpt-e0099-s00009999.pt.corrupt").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["finished"]
    assert_same_weights(final_state(reference[0]), final_state(tmp_path))


def test_explicit_bad_resume_path_exits_2(data, tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    r = call_main(trainer_mod.main, args(data, tmp_path / "run", f"checkpoint.resume={bad}"))
    assert r.returncode == 2 and "x.pt" in r.stderr.strip().splitlines()[-1], r.stderr


def test_resume_into_a_different_model_exits_2(data, tmp_path):
    path = ckpt.save_checkpoint(make_state(1, 10), tmp_path / "old", keep_last=1, is_best=False)  # a resnet18's
    r = call_main(trainer_mod.main, args(data, tmp_path / "run", f"checkpoint.resume={path}", "model.name=resnet34"))
    assert r.returncode == 2 and f"{path}: does not fit resnet34" in r.stderr, r.stderr[-2000:]


# Scripted evaluations, (model top-1, EMA top-1) per epoch: the EMA's 30 at epoch 1 is the best;
# the model's 30 at epoch 2 only ties it, so best.pt stays at epoch 1.
SCORES = [(20.0, 10.0), (15.0, 30.0), (30.0, 25.0)]


def test_best_pt_keeps_the_better_weights_of_the_best_epoch(tmp_path, monkeypatch):
    scores = iter(s for epoch in SCORES for s in epoch)  # evaluated in order: the model, then its EMA

    def evaluate(model, loader, epoch, precision, info):
        top1 = next(scores)
        return {"top1": top1, "top5": top1 + 50, "count": 16, "expected": 16}

    monkeypatch.setattr(trainer_mod, "evaluate", evaluate)
    ok(call_main(trainer_mod.main, [*SYNTH, "data.batch_size=2", "data.image_size=16", "train.epochs=3",
                                    "optim.ema_decay=0.9", "checkpoint.keep_last=3", f"run_dir={tmp_path}"]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["best_top1"], summary["best_top5"], summary["best_weights"], summary["best_epoch"]) == (
        30.0, 80.0, "ema", 1)
    assert (summary["final_top1"], summary["final_ema_top1"]) == (30.0, 25.0)
    best = ckpt.load_checkpoint(tmp_path / "best.pt")
    assert best["selected_weights"] == "ema" and best["best"] == {"top1": 30.0, "top5": 80.0, "epoch": 1,
                                                                   "weights": "ema"}
    assert_same_weights(best, ckpt.load_checkpoint(tmp_path / ckpt.checkpoint_name(2, 2 * 8)))  # saved after epoch 1


def test_summary_weights_throughput_by_steps_and_data_wait_by_time():
    """A partial epoch counts for the steps it ran: 100 img/s over 3 steps and 200 over 1 average
    to 125; waits of 50% over 1 s and 10% over 3 s to 20%."""
    history = [{"img_per_s": 100.0, "steps": 3, "train_s": 1.0, "data_wait_fraction": 0.5, "top1": 1.0},
               {"img_per_s": 200.0, "steps": 1, "train_s": 3.0, "data_wait_fraction": 0.1}]
    best = {"top1": 1.0, "top5": 2.0, "epoch": 0, "weights": "model"}
    s = summarize(history, best, epochs_done=1, epochs_planned=2)
    assert s["mean_img_per_s"] == pytest.approx(125.0) and s["data_wait_fraction"] == pytest.approx(0.2)
    assert (s["train_s"], s["finished"], s["final_top1"]) == (4.0, False, 1.0)


@pytest.mark.slow
def test_finetune_freezes_stages_and_replaces_head(data, tmp_path):
    torch.manual_seed(1)
    source = build_model(ModelConfig(name="resnet18", num_classes=1000)).state_dict()
    weights = tmp_path / "resnet18_tv.pth"
    torch.save(source, weights)
    out = train_ok(data, tmp_path / "run", "train.epochs=1", f"train.finetune.weights={weights}",
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


@pytest.mark.slow
def test_distillation_from_the_reference_run(data, reference, tmp_path):
    teacher = reference[0] / "best.pt"
    out = train_ok(data, tmp_path, "train.epochs=1", f"distill.teacher={teacher}", "distill.teacher_model=resnet18",
                   "distill.alpha=0.7")
    assert f"distilling from {teacher} (resnet18" in out and "alpha 0.7, temperature 4.0" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finished"] and summary["teacher"] == str(teacher)


def test_a_missing_teacher_stops_before_any_work(data, tmp_path):
    r = call_main(trainer_mod.main, args(data, tmp_path / "run", f"distill.teacher={tmp_path / 'nope.pt'}"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nope.pt'}: no such teacher file " \
                                                     "(distill.teacher)", r.stderr
    assert not (tmp_path / "run").exists()
