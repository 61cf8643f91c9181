"""Stopping: the ranks' vote on a stop request (train/stop.py) and the record of an epoch that a
stop splits (train/epoch_record.py). The stop-and-resume runs themselves are in
test_reliability.py (one process) and test_slurm.py (two ranks under SLURM)."""

import signal

import pytest
import torch
import torch.multiprocessing as mp

from train.distributed import DistInfo
from train.epoch_record import continues, merged
from train.stop import StopFlag, StopVote

STEPS = 8
ASKS_AT = 3  # the step during which rank 1 is asked to stop


def vote_on_two_ranks(rank: int, init_file: str, out) -> None:
    """Rank `rank` of 2 (gloo): casts one vote per step, rank 1 asking from step ASKS_AT on;
    puts (rank, the steps where the vote said stop, what close() said after the last step)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info = DistInfo(rank, 2, rank, None, 2, dist.new_group(backend="gloo"))
    vote = StopVote(info)
    said = [step for step in range(STEPS) if vote.cast(rank == 1 and step >= ASKS_AT)]
    out.put((rank, said, vote.close()))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned torch processes
def test_every_rank_stops_after_the_step_following_the_request(tmp_path):
    """Rank 1 asks during step 3; its vote is read after step 4 on both ranks (the vote of step k
    is read at step k+1), rank 0 included although it was never asked."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=vote_on_two_ranks, args=(r, str(tmp_path / "init"), out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    expected = list(range(ASKS_AT + 1, STEPS))
    assert results == [(0, expected, True), (1, expected, True)]
    assert all(p.exitcode == 0 for p in procs)


def test_one_process_stops_after_the_step_it_was_asked_in():
    vote = StopVote(DistInfo(0, 1, 0, torch.device("cpu")))
    assert [vote.cast(step >= ASKS_AT) for step in range(5)] == [False, False, False, True, True]


def test_stop_flag_takes_usr1_term_and_int():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    try:
        for signum in saved:
            flag = StopFlag().install()
            signal.raise_signal(signum)
            assert flag.requested, signum
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_a_stopped_epoch_and_its_rest_are_one_record():
    """3 steps at mean loss 2.0 then 15 at 1.5: 18 steps at (3 * 2.0 + 15 * 1.5) / 18; 2 s + 6 s of
    training; 30 img/s over 3 steps and 10 over 15: 18 / (3 / 30 + 15 / 10) = 11.25 (time per
    step weights the rates); data wait 50% of 2 s and 10% of 6 s: 20%."""
    before = {"epoch": 4, "loss": 2.0, "img_per_s": 30.0, "steps": 3, "partial": True, "resumed": 0,
              "data_wait_fraction": 0.5, "train_s": 2.0, "data_wait_hist": [1, 2, 0], "image_size": 32}
    after = {"epoch": 4, "loss": 1.5, "img_per_s": 10.0, "steps": 15, "partial": False, "resumed": 0,
             "data_wait_fraction": 0.1, "train_s": 6.0, "data_wait_hist": [5, 9, 1], "image_size": 32}
    assert continues([{"epoch": 3, "partial": False}, before], 4)
    assert not continues([before], 5) and not continues([after], 4) and not continues([], 4)
    m = merged(before, after)
    assert m.pop("loss") == pytest.approx(28.5 / 18)
    assert m.pop("img_per_s") == pytest.approx(11.25)
    assert m.pop("data_wait_fraction") == pytest.approx(0.2)
    assert m == {"epoch": 4, "steps": 18, "partial": False, "resumed": 1, "train_s": 8.0,
                 "data_wait_hist": [6, 11, 1], "image_size": 32}
    again = m | {"loss": 1.0, "img_per_s": 1.0, "data_wait_fraction": 0.0, "partial": True}  # stopped twice
    assert merged(again, after)["resumed"] == 2
