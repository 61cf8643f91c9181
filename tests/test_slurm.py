"""SLURM for real: tools/slurm_train.sbatch on the one-node cluster of tools/local_slurm.sh
(slurmctld + slurmd + munge on localhost, 2 CPUs, no GPU). One job of 2 tasks trains with world
size 2 to the end; a second, identical one is sent USR1 early (as the time limit's notice would
be), checkpoints on both ranks, requeues itself and resumes to the same final weights and records.

Marked `cluster` (and slow): `pytest -m cluster` runs them. A session starts the cluster with the
script when none answers (root and apt needed), else the tests skip with the reason.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BATCH, ROOT, TINY, final_state, process_env, steps_per_epoch

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SCRIPT = ROOT / "tools" / "slurm_train.sbatch"
TASKS = 2
JOB_S = 300  # a job's limit here, requeue wait included
ARGS = [*TINY, "data.num_threads=1", "train.epochs=2"]
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def cluster_answers() -> bool:
    """Whether a slurm controller answers and a node is idle or in use."""
    if not shutil.which("sinfo"):
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and bool(set(r.stdout.split()) & {"idle", "mixed", "allocated"})


LOCAL_SLURM = ROOT / "tools" / "local_slurm.sh"
START_S = 600  # installing slurm and munge with apt, then starting them (inside the slow tests' limit)


@pytest.fixture(scope="session")
def cluster():
    """A running slurm cluster: the one that answers, or tools/local_slurm.sh's, which is stopped
    again when the session ends."""
    if cluster_answers():
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("no slurm cluster answers, and starting one (tools/local_slurm.sh) needs root")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        pytest.skip("no slurm cluster answers, and there is no apt-get to install one")
    try:
        r = subprocess.run(["bash", str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=START_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"tools/local_slurm.sh did not start a cluster within {START_S} s (apt?)")
    if r.returncode != 0:
        pytest.skip(f"tools/local_slurm.sh could not start a cluster: {r.stderr.strip().splitlines()[-1:]}")
    yield
    subprocess.run(["bash", str(LOCAL_SLURM), "stop"], capture_output=True, timeout=60)


def show_job(job: str) -> dict:
    """`scontrol show job -o JOB` as a dict (JobState, Restarts, ExitCode, NumTasks, ...)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout))


def submit(data: Path, run_dir: Path) -> str:
    """The sbatch script with TASKS tasks on one node, training ARGS on `data` into `run_dir`;
    returns the job id. Its log is `run_dir`.out."""
    env = process_env(threads=None, PYTHON=sys.executable, RUN_DIR=str(run_dir), CONFIG="")
    r = subprocess.run(["sbatch", "--parsable", f"--ntasks-per-node={TASKS}", f"--output={run_dir}.out",
                        str(SCRIPT), *ARGS, f"data.path={data}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def wait_for(job: str, until, timeout_s: float = JOB_S) -> dict:
    """Poll the job until `until(state)` holds; its state then. A job still short of it after
    `timeout_s` is cancelled and fails the test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = show_job(job)
        if until(state):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job], timeout=30)
    pytest.fail(f"job {job} not done after {timeout_s} s: {show_job(job)}")


def ended(state: dict) -> bool:
    return state["JobState"] in DONE


def log_of(run_dir: Path) -> str:
    out = Path(f"{run_dir}.out")
    return out.read_text() if out.exists() else ""


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["kind"] == kind]


@pytest.fixture(scope="module")
def uninterrupted(cluster, shards, tmp_path_factory) -> tuple[Path, dict]:
    """The job run to its end without a signal: (run_dir, its final `scontrol show job`)."""
    run_dir = tmp_path_factory.mktemp("slurm") / "uninterrupted"
    job = submit(shards, run_dir)
    return run_dir, wait_for(job, ended)


def test_two_tasks_train_with_world_size_two(uninterrupted, shards):
    run_dir, job = uninterrupted
    assert (job["JobState"], job["ExitCode"], job["NumTasks"]) == ("COMPLETED", "0:0", str(TASKS)), log_of(run_dir)
    (prov,) = records(run_dir, "provenance")
    assert prov["world_size"] == TASKS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == TASKS and summary["global_batch"] == TASKS * BATCH
    steps = steps_per_epoch(shards, ranks=TASKS)
    assert [(m["epoch"], m["steps"]) for m in records(run_dir, "epoch")] == [(0, steps), (1, steps)]


def epoch_fields(history: list[dict]) -> list[dict]:
    keys = ("epoch", "steps", "partial", "image_size", "top1", "top5", "ema_top1", "ema_top5", "val_count")
    return [{k: h.get(k) for k in keys} for h in history]


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_state(uninterrupted, shards, tmp_path):
    run_dir = tmp_path / "signalled"
    steps = steps_per_epoch(shards, ranks=TASKS)
    job = submit(shards, run_dir)
    try:
        wait_for(job, lambda s: f"epoch 0 step 4/{steps} " in log_of(run_dir) or ended(s))
        r = subprocess.run(["scancel", "--signal=USR1", "--batch", job], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        state = wait_for(job, ended)
    finally:
        subprocess.run(["scancel", job], timeout=30)  # no-op for an ended job
    log = log_of(run_dir)
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("COMPLETED", "0:0", "1"), log[-4000:]

    # Both ranks stopped after the same step, mid-epoch 0; the requeued job resumed from there.
    stop = re.search(r"stop requested: checkpointed at epoch 0 step (\d+); exiting", log)
    assert stop and 4 < int(stop[1]) < steps, log[-4000:]
    k = int(stop[1])
    assert f"resumed from {run_dir / f'ckpt-e0000-s{k:08d}.pt'}: epoch 0, step {k} of it, global step {k}" in log
    assert log.count("(restart 0)") == 1 and log.count("(restart 1)") == 1  # one log, appended to

    # The step count continues: the logged steps are the uninterrupted job's, none twice.
    ref_dir = uninterrupted[0]
    assert [m["step"] for m in records(run_dir, "train")] == [m["step"] for m in records(ref_dir, "train")]

    # Same final weights (bit for bit), optimizer state and records as the uninterrupted job.
    a, b = final_state(ref_dir), final_state(run_dir)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 2 * steps)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    for i, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"]), i
    for ours, theirs in ((b["history"], a["history"]), (records(run_dir, "epoch"), records(ref_dir, "epoch"))):
        assert epoch_fields(ours) == epoch_fields(theirs)
        assert [h["loss"] for h in ours] == pytest.approx([h["loss"] for h in theirs], rel=1e-6)
        assert [h["resumed"] for h in ours] == [1, 0]
    assert [m["step"] for m in records(run_dir, "stopped")] == [k]
