"""Checkpoints: round trip, atomic writes, keep-last, corrupt files skipped, pickles refused."""

import pickle
import random

import numpy as np
import pytest
import torch
from conftest import Evil, make_state

from train import checkpoint as ckpt


def test_round_trip_restores_everything(tmp_path):
    random.seed(3)
    np.random.seed(3)
    state = make_state(1, 10)
    path = ckpt.save_checkpoint(state, tmp_path, keep_last=3, is_best=True)
    assert path.name == "ckpt-e0001-s00000010.pt" and (tmp_path / "best.pt").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    expect = (torch.rand(3), random.random(), np.random.rand())
    back = ckpt.load_checkpoint(path)
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v), k
    mom = back["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(mom, state["optimizer"]["state"][0]["momentum_buffer"])
    assert back["config"] == state["config"] and back["history"] == state["history"]
    ckpt.set_rng_state(back["rng"], torch.device("cpu"))
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expect[0], again[0]) and expect[1:] == again[1:]


def test_keep_last_and_best(tmp_path):
    state = make_state(0, 0)
    for epoch in range(1, 6):
        ckpt.save_checkpoint({**state, "epoch": epoch, "global_step": 10 * epoch}, tmp_path, keep_last=2,
                             is_best=epoch == 2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt-e0004-s00000040.pt", "ckpt-e0005-s00000050.pt"]
    assert ckpt.load_checkpoint(tmp_path / "best.pt")["epoch"] == 2  # survives its file's pruning


def test_resume_auto_skips_corrupt_and_partial_files(tmp_path, capsys):
    state = make_state(1, 10)
    good = ckpt.save_checkpoint(state, tmp_path, keep_last=5, is_best=False)
    data = good.read_bytes()
    (tmp_path / ckpt.checkpoint_name(2, 20)).write_bytes(data[: len(data) // 2])  # partial
    (tmp_path / ckpt.checkpoint_name(3, 30)).write_bytes(b"\0" * 1000)  # garbage
    torch.save({"model": {}}, tmp_path / ckpt.checkpoint_name(4, 40))  # not ours
    (tmp_path / f".{ckpt.checkpoint_name(5, 50)}.tmp-123").write_bytes(data)  # a dead writer's temp file
    path, back = ckpt.find_resume(tmp_path)
    assert path == good and back["global_step"] == 10
    err = capsys.readouterr().err
    assert err.count("warning: skipping checkpoint") == 3, err
    assert ckpt.list_checkpoints(tmp_path) == [good]  # the bad ones were renamed *.corrupt
    assert len(list(tmp_path.glob("*.pt.corrupt"))) == 3
    assert ckpt.find_resume(tmp_path / "nothing") is None


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / ckpt.checkpoint_name(9, 90)
    state = make_state(1, 10)
    state["model"]["evil"] = Evil(marker)
    torch.save({"format": ckpt.FORMAT, **state}, path)
    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump(Evil(marker), f, protocol=2)
    for p in (path, tmp_path / "plain.pt"):
        with pytest.raises(ckpt.CheckpointError, match="not weights-only"):
            ckpt.load_checkpoint(p)
    assert ckpt.find_resume(tmp_path) is None
    assert not marker.exists()


def test_a_best_record_from_before_selected_weights_still_loads():
    """Older checkpoints saved best as [top1, top5, epoch]; a resume reads it as the model's."""
    from train.checkpoint import Progress, saved_best

    assert saved_best([71.5, 90.25, 3]) == {"top1": 71.5, "top5": 90.25, "epoch": 3, "weights": "model"}
    assert saved_best(None) == Progress().best
    now = {"top1": 1.0, "top5": 2.0, "epoch": 0, "weights": "ema"}
    assert saved_best(now) == now and saved_best(now) is not now
