"""Reliability: exact resume after SIGKILL, kills during checkpoint writes, SIGINT, a torchrun
worker killed mid-epoch, full disks, bad shards, bad configs and hostile files (README:
"Reliability: what we promise and how it is tested").

Tiny runs: ResNet-18 at 32 px, DALI on the CPU over the `shards` fixture (steps per epoch computed
from its split), or the synthetic loader where no data is needed. What needs a process of its own
(signals, SIGKILL, torchrun) runs in one, with a timeout, and is marked slow; a run that only has to
end in an error line and an exit code runs the trainer's main() in this process. One OpenMP thread
per process, so the runs stay fast when the machine is busy; two where a run must match the shared
reference run (conftest.REFERENCE).
"""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch
from conftest import (
    BAD,
    GOOD,
    REFERENCE,
    SYNTH,
    TINY,
    Evil,
    assert_same_weights,
    call_main,
    digests,
    final_state,
    make_shard,
    make_state,
    ok,
    run_python,
    started,
    steps_per_epoch,
    tamper_index,
    train,
    truncate,
)

from pipeline import atomic
from pipeline.shards import format_idx, group_samples, load_split, scan_tar
from tools import shard_imagenet
from tools.shard_writer import TarIndexWriter
from train import checkpoint as ckpt
from train import fault
from train import trainer as trainer_mod
from train.config import ConfigError, load_config
from train.distributed import DistInfo

TWO_EPOCHS = [*TINY, "data.num_threads=1", "train.epochs=2"]  # the signal and torchrun runs, one thread each


@pytest.fixture(scope="module")
def steps(shards) -> int:
    """Training steps per epoch of TINY on the shards fixture."""
    return steps_per_epoch(shards)

# `python -c KILLED_SAVE args...` = `python -m train args...` that writes half of its checkpoint
# number $KILL_AT_SAVE, then SIGKILLs itself (a power cut mid-write).
KILLED_SAVE = """
import io, os, signal, sys
import torch
from train.trainer import main

real_save, calls = torch.save, []

def save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ["KILL_AT_SAVE"]):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: buf.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
sys.exit(main(sys.argv[1:]))
"""


def one_error_line(r, needle: str) -> str:
    """Exit 2 with exactly one line on stderr, containing `needle`; returns it."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (r.returncode, r.stderr[-3000:])
    return lines[0]


def epoch_metrics(state: dict) -> list[dict]:
    keys = ("epoch", "loss", "partial", "image_size", "top1", "top5", "ema_top1", "ema_top5", "val_count")
    return [{k: h.get(k) for k in keys} for h in state["history"]]


def assert_same_run(a: dict, b: dict):
    """Same step, same weights (max abs difference <= 1e-6), same per-epoch metrics."""
    assert a["step_in_epoch"] == b["step_in_epoch"]
    assert_same_weights(a, b)
    ma, mb = epoch_metrics(a), epoch_metrics(b)
    assert [m.pop("loss") for m in ma] == pytest.approx([m.pop("loss") for m in mb], abs=1e-6)
    assert ma == mb


@pytest.fixture(scope="module")
def data(shards):
    return f"data.path={shards}"


# --- exact resume, kills, signals ------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_during_checkpoint_write_resumes_exactly(data, reference_run, tmp_path, steps):
    """SIGKILL half-way through writing the checkpoint after epoch 1: the epoch-0 checkpoint is
    what `resume: auto` takes, and the resumed run ends with the reference's weights and metrics."""
    reference = final_state(reference_run[0])
    args = [*REFERENCE, data, f"run_dir={tmp_path}"]
    r = train(args, code=KILLED_SAVE, env={"KILL_AT_SAVE": "2"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.checkpoint_name(1, steps)]
    (torn,) = tmp_path.glob(f".{ckpt.checkpoint_name(2, 2 * steps)}.tmp-*")  # the killed write, never renamed
    assert 0 < torn.stat().st_size
    out = ok(train(args))  # the same command again
    assert "removing" in out and torn.name in out and not torn.exists()
    resumed = tmp_path / ckpt.checkpoint_name(1, steps)
    assert f"resumed from {resumed}: epoch 1, step 0 of it, global step {steps}" in out
    assert_same_run(reference, final_state(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finished"] and summary["final_top1"] == reference["history"][-1]["top1"]


@pytest.mark.slow
def test_sigint_writes_a_final_checkpoint_and_exits_0(data, tmp_path, steps):
    lines = []
    with started("-m", "train", *TWO_EPOCHS, data, f"run_dir={tmp_path}", threads=1) as proc:
        for line in proc.stdout:  # Ctrl-C mid-epoch 0, right after its fourth step
            lines.append(line)
            if line.startswith(f"epoch 0 step 4/{steps}"):
                proc.send_signal(signal.SIGINT)
        rc = proc.wait()
    out = "".join(lines)
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    state = final_state(tmp_path)
    assert state["epoch"] == 0 and 4 <= state["step_in_epoch"] < steps, (state["epoch"], state["step_in_epoch"])
    assert f"stop requested: checkpointed at epoch 0 step {state['step_in_epoch']}; exiting" in out
    assert not json.loads((tmp_path / "summary.json").read_text())["finished"]


@pytest.mark.slow
def test_an_epoch_stopped_and_resumed_is_one_epoch_in_the_record(data, reference_run, tmp_path, steps):
    """The reference run, SIGTERMed mid-epoch 1, then run again: it resumes there and ends with the
    reference's weights, one history entry and one metrics.jsonl "epoch" line per epoch with the
    reference's steps, loss (the mean over all the epoch's steps) and accuracy; epoch 1 says it
    was resumed once."""
    args = [*REFERENCE, data, f"run_dir={tmp_path}"]
    with started("-m", "train", *args) as proc:
        for line in proc.stdout:
            if line.startswith(f"epoch 1 step 4/{steps}"):
                proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 0
    stopped = final_state(tmp_path)
    assert stopped["epoch"] == 1 and 4 <= stopped["step_in_epoch"] < steps
    assert stopped["history"][-1]["partial"] and stopped["history"][-1]["steps"] == stopped["step_in_epoch"]
    ok(train(args))
    reference, resumed = final_state(reference_run[0]), final_state(tmp_path)
    assert_same_run(reference, resumed)
    assert [h["steps"] for h in resumed["history"]] == [h["steps"] for h in reference["history"]] == [steps] * 3
    assert [h["resumed"] for h in resumed["history"]] == [0, 1, 0]
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in lines if m["kind"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [0, 1, 2]
    assert [m["loss"] for m in epochs] == pytest.approx([h["loss"] for h in reference["history"]], abs=1e-6)
    assert [(m["kind"], m["steps"]) for m in lines if m["kind"] == "stopped"] == [("stopped", stopped["step_in_epoch"])]


@pytest.mark.slow
def test_torchrun_restarts_after_a_worker_is_killed_mid_epoch(shards, tmp_path):
    """torchrun --max-restarts 1, 2 CPU ranks (gloo): rank 1 SIGKILLs itself at epoch 1 step 5
    (train/fault.py); the restarted group resumes from the epoch-0 checkpoint, finishes, and
    evaluates every validation image exactly once."""
    run_dir = tmp_path / "run"
    r = run_python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max-restarts", "1",
                   "-m", "train",
                   *[a for a in TWO_EPOCHS if not a.startswith(("optim.mixup", "optim.ema", "train.deterministic"))],
                   f"data.path={shards}", "train.log_every=4", f"run_dir={run_dir}",
                   threads=1, env={fault.ENV: "1:5"}, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "fault injection: SIGKILL at epoch 1 step 5" in out and (run_dir / fault.MARKER).exists()
    steps = steps_per_epoch(shards, ranks=2)
    assert f"resumed from {run_dir / ckpt.checkpoint_name(1, steps)}: epoch 1, step 0 of it, global step {steps}" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2
    records = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in records if m["kind"] == "epoch"]
    n_val = load_split(shards, "val").num_samples
    assert [(m["epoch"], m["val_count"], m["val_expected"]) for m in epochs] == [(0, n_val, n_val), (1, n_val, n_val)]
    state = final_state(run_dir)
    assert (state["epoch"], state["global_step"]) == (2, 2 * steps)


# --- full disk / read-only output ------------------------------------------------------------

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def _half_then_enospc(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04" + bytes(1000))  # some bytes reached the disk, then it filled up
    _enospc()


@pytest.mark.parametrize("where", ["open", "write"])
def test_checkpoint_write_failure_leaves_the_previous_one(tmp_path, monkeypatch, where):
    state = make_state(1, 10)
    good = ckpt.save_checkpoint(state, tmp_path, keep_last=3, is_best=True)
    if where == "open":  # a read-only folder (root ignores chmod, so the failure is injected)
        monkeypatch.setattr(atomic, "open", _erofs, raising=False)
        reason = "Read-only file system"
    else:
        monkeypatch.setattr(ckpt.torch, "save", _half_then_enospc)
        reason = "No space left on device"
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save_checkpoint({**state, "epoch": 2, "global_step": 20}, tmp_path, keep_last=3, is_best=True)
    assert str(e.value) == f"{tmp_path / 'ckpt-e0002-s00000020.pt'}: cannot write checkpoint ({reason})"
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", good.name]  # no partial or temp file
    path, back = ckpt.find_resume(tmp_path)
    assert path == good and back["global_step"] == 10


def test_trainer_disk_full_exits_2_then_resumes(tmp_path, monkeypatch):
    """The disk fills up during the second checkpoint write (some bytes reach it first): exit 2,
    one line naming the file; the same command afterwards resumes from the first checkpoint."""
    args = [*SYNTH, f"run_dir={tmp_path}"]
    real_save, saves = torch.save, []

    def save(obj, f, *a, **kw):
        saves.append(1)
        return (_half_then_enospc if len(saves) == 2 else real_save)(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", save)
    one_error_line(call_main(trainer_mod.main, args),
                   f"error: {tmp_path / 'ckpt-e0002-s00000016.pt'}: cannot write checkpoint (No space left on device)")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.glob("*.pt*")) == ["best.pt", "ckpt-e0001-s00000008.pt"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    out = ok(call_main(trainer_mod.main, args))
    assert "resumed from" in out and "global step 8" in out
    assert final_state(tmp_path)["epoch"] == 2


def test_sharding_disk_full_exits_2_then_rerun_completes(synthetic, shards, tmp_path, monkeypatch, capsys):
    """ENOSPC half-way through the second train shard: exit 2, one line naming that shard, no file
    under its final name; the same command afterwards gives the same bytes as an undisturbed run."""
    added = []

    def add_sample(self, key, files):
        added.append(key)
        if len(added) == 60:  # the 20th sample of the second shard: 19 are already in its temp file
            _enospc()
        real_add(self, key, files)

    real_add = TarIndexWriter.add_sample
    monkeypatch.setattr(TarIndexWriter, "add_sample", add_sample)
    monkeypatch.setattr(shard_imagenet, "Pool", get_context("fork").Pool)  # workers inherit the patch
    out = tmp_path / "out"
    args = ["--src", str(synthetic.root), "--out", str(out), "--samples-per-shard", "40", "--workers", "1"]
    capsys.readouterr()
    assert shard_imagenet.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {out / 'imagenet1k-train-000001.tar'}: No space left on device", err
    assert not list(out.glob("imagenet1k-train-000001.*")) and not (out / "_info.json").exists()
    for tar in out.glob("*.tar"):  # any other final name is a finished shard (the pool was stopped)
        assert (out / ".shard_state" / f"{tar.name}.json").exists(), tar
    monkeypatch.undo()
    assert shard_imagenet.main(args) == 0
    assert digests(out) == digests(shards)


# --- bad shards at train time, and --verify ----------------------------------------------------

def bad_dataset(out: Path, train_samples) -> Path:
    """A 2-class dataset: one train shard from `train_samples`, one good validation shard."""
    make_shard(out, train_samples)
    val = make_shard(out.with_name(out.name + "-val"), GOOD)
    for ext in ("tar", "idx"):
        (val / f"x-train-000000.{ext}").rename(out / f"x-validation-000000.{ext}")
    info = json.loads((out / "_info.json").read_text())
    info["splits"]["validation"] = {"name": "validation", "filenames": ["x-validation-000000.tar"],
                                    "shard_lengths": [len(GOOD)]}
    (out / "_info.json").write_text(json.dumps(info))
    return out


def first_sample_member(out: Path, sample: int) -> int:
    """Offset of a sample's first member's data in the train shard (two members per sample)."""
    return scan_tar(out / "x-train-000000.tar")[2 * sample].offset


TRAIN_TIME = {  # case -> (bad sample or None, damage, what the one error line must say)
    "truncated inside a member": (None, lambda out: truncate(out / "x-train-000000.tar", 3000),
                                  r"x-train-000000.tar: truncated at sample k\d"),
    "truncated on a header boundary": (
        None, lambda out: (truncate(out / "x-train-000000.tar", first_sample_member(out, 4) - 512),
                           (out / "x-train-000000.idx").unlink()),
        r"x-train-000000.tar: (truncated|holds 4 samples)"),
    "tampered idx": (None, lambda out: tamper_index(out / "x-train-000000.idx", sample=1),
                     r"x-train-000000.idx: sample k1 does not match"),
    "missing cls": (BAD["missing cls"][0], None, r"x-train-000000.tar: sample kbad has no cls"),
    "corrupt jpg": (BAD["corrupt jpg"][0], None, r"x-train-000000.tar: sample kbad: jpg does not decode"),
    "label out of range": (BAD["label out of range"][0], None,
                           r"x-train-000000.tar: sample kbad: cls '7' is out of range for 2 classes"),
}


# Every case with DALI; two with the baseline, whose errors reach the trainer's one error line the
# same way (each loader's message for every case: test_pipeline.py, in-process).
@pytest.mark.parametrize(("case", "loader"), [*((c, "dali") for c in sorted(TRAIN_TIME)),
                                              ("corrupt jpg", "baseline"), ("truncated inside a member", "baseline")])
def test_bad_shard_stops_training_with_one_line(tmp_path, case, loader):
    """The trainer on a bad shard (its main(), in this process): exit 2, one `error:` line (the
    last on stderr) naming the shard and the sample key, no traceback, no hang."""
    bad, damage, pattern = TRAIN_TIME[case]
    out = bad_dataset(tmp_path / "d", GOOD[:3] + [("kbad", bad)] + GOOD[3:] if bad else GOOD)
    if damage:
        damage(out)
    # workers=0: the baseline reads in the trainer's process (its workers' error path: test_pipeline.py)
    r = call_main(trainer_mod.main, [
        f"data.loader={loader}", f"data.path={out}", "data.batch_size=3", "data.num_threads=1", "data.workers=0",
        "data.image_size=32", "data.val_image_size=32", "model.name=resnet18", "model.num_classes=2",
        "train.epochs=1", "optim.warmup_epochs=0", f"run_dir={tmp_path / 'run'}"])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert errors[0] == r.stderr.strip().splitlines()[-1]
    assert re.search(pattern, errors[0]) and str(out) in errors[0], errors[0]


def rewrite_shard(out: Path, name: str, change) -> str:
    """Rewrite shard `name` with `change(files)` applied to its 4th sample (files: ext -> bytes),
    and update `_info.json` to match, so --verify has only the sample itself to complain about."""
    tar = out / name
    blob = tar.read_bytes()
    samples = group_samples(scan_tar(tar))
    with open(tar, "wb") as f:
        w = TarIndexWriter(f)
        for i, members in enumerate(samples):
            files = {m.ext: blob[m.offset:m.offset + m.size] for m in members}
            if i == 3:
                change(files)
            w.add_sample(members[0].key, list(files.items()))
        w.close()
    index = format_idx(w.samples).encode()
    tar.with_suffix(".idx").write_bytes(index)
    info = json.loads((out / "_info.json").read_text())
    split = info["splits"]["train"]
    i = split["filenames"].index(name)
    split["shard_bytes"][i], split["shard_sha256"][i] = w.pos, w.sha.hexdigest()
    split["shard_idx_sha256"][i] = hashlib.sha256(index).hexdigest()
    (out / "_info.json").write_text(json.dumps(info))
    return samples[3][0].key


VERIFY = {  # the --verify cases tests/test_shard_imagenet.py does not already cover: what follows the key
    "missing cls": (lambda files: files.pop("cls"), " has no cls"),
    "corrupt jpg": (lambda files: files.update(jpg=files["jpg"][:120]), ": jpg does not decode"),
    "label out of range": (lambda files: files.update(cls=b"10"), ": cls '10' is out of range for 10 classes"),
}


@pytest.mark.parametrize("case", sorted(VERIFY))
def test_verify_names_the_bad_sample(shards, tmp_path, capsys, case):
    out = tmp_path / "bad"
    shutil.copytree(shards, out)
    change, needle = VERIFY[case]
    key = rewrite_shard(out, "imagenet1k-train-000002.tar", change)
    capsys.readouterr()
    assert shard_imagenet.main(["--verify", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    line = f"verify: {out / 'imagenet1k-train-000002.tar'}: sample {key}{needle}"
    assert captured.err.startswith(line) and len(captured.err.strip().splitlines()) == 1, captured.err
    assert f"verify: {out}: 1 problems" in captured.out


# --- bad configuration -----------------------------------------------------------------------

@pytest.mark.parametrize("extra, needle", [
    (["data.loader=dali"], "config: data.path: no shard folder given"),
    (["data.path={tmp}/nope"], "error: {tmp}/nope: data folder does not exist"),
    (["data.path={shards}", "data.batch_size=500"],
     "config: data.batch_size: {n} train samples over 1 ranks give no full batch of 500 per rank"),
], ids=["no data path", "missing data folder", "batch larger than the rank's share"])
def test_bad_data_config_one_line_before_any_work(shards, tmp_path, extra, needle):
    extra = [a.format(tmp=tmp_path, shards=shards) for a in extra]
    r = call_main(trainer_mod.main, ["model.name=resnet18", "model.num_classes=10", *extra,
                                     f"run_dir={tmp_path / 'run'}"])
    one_error_line(r, needle.format(tmp=tmp_path, n=load_split(shards, "train").num_samples))
    assert r.stdout == "" and not (tmp_path / "run").exists()


def test_more_ranks_than_samples_is_a_config_error(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "set_determinism", lambda cfg, rank: None)  # keep this process's RNGs
    cfg = load_config(None, [f"data.path={shards}", "data.batch_size=1", "model.name=resnet18",
                             "model.num_classes=10", f"run_dir={tmp_path / 'run'}"])
    n = load_split(shards, "train").num_samples
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)]
    with pytest.raises(ConfigError, match=rf"^config: train: {n + 1} ranks but only {n} samples$"):
        trainer_mod.run(cfg, DistInfo(rank=0, world=n + 1, local_rank=0, device=torch.device("cpu")))
    assert not (tmp_path / "run").exists()
    # the run's stop handlers are gone with it (a forked pool worker would otherwise ignore SIGTERM)
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)] == handlers


def test_fault_hook_fires_once_on_the_last_rank_only(monkeypatch, tmp_path):
    kills = []
    monkeypatch.setattr(fault.os, "kill", lambda pid, sig: kills.append(sig))
    monkeypatch.delenv(fault.ENV, raising=False)
    assert fault.kill_hook(tmp_path, 1, 2) is None  # off unless set
    monkeypatch.setenv(fault.ENV, "1:5")
    assert fault.kill_hook(tmp_path, 0, 2) is None
    hook = fault.kill_hook(tmp_path, 1, 2)
    for epoch, step in [(1, 4), (0, 5), (1, 5), (1, 5)]:
        hook(epoch, step)
    assert kills == [signal.SIGKILL] and (tmp_path / fault.MARKER).exists()  # once: the marker stays
    monkeypatch.setenv(fault.ENV, "soon")
    with pytest.raises(ConfigError, match="EPOCH:STEP"):
        fault.kill_hook(tmp_path, 1, 2)


# --- hostile files -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["checkpoint.resume", "train.finetune.weights"])
def test_trainer_refuses_a_pickle_that_runs_code(tmp_path, key):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": {"w": Evil(marker)}}, evil)
    r = call_main(trainer_mod.main, [*SYNTH, f"{key}={evil}", f"run_dir={tmp_path / 'run'}"])
    line = one_error_line(r, f"error: {evil}: ")
    assert "weights_only" in line or "weights-only" in line
    assert not marker.exists()


@pytest.mark.slow
def test_a_rank_with_a_bad_shard_stops_the_whole_torchrun_job(tmp_path):
    """2 ranks: only rank 0's share holds the corrupt sample. Rank 0 prints its one line and exits
    at once; torchrun stops rank 1, which would otherwise wait in a collective for the timeout."""
    out = bad_dataset(tmp_path / "d", GOOD[:3] + [("kbad", BAD["corrupt jpg"][0])] + GOOD[3:])
    r = run_python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train",
                   "data.loader=dali", f"data.path={out}", "data.batch_size=2", "data.num_threads=1",
                   "data.image_size=32", "data.val_image_size=32", "model.name=resnet18", "model.num_classes=2",
                   "train.epochs=2", "optim.warmup_epochs=0", f"run_dir={tmp_path / 'run'}", threads=1, timeout=180)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1, r.stderr[-3000:]
    assert "x-train-000000.tar: sample kbad: jpg does not decode" in errors[0]
    assert not list((tmp_path / "run").glob("ckpt-*.pt"))  # stopped in the first epoch
