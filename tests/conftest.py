"""Shared fixtures and helpers: a small synthetic ImageNet and its shards (made once per test
session), the tiny training run, how tests start a process or run a command's main() in this one
(run_python, started, train, call_main), shard builders and damage, and checkpoint comparisons."""

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from model import ModelConfig, build_model
from pipeline.shards import format_idx, load_split
from tools import make_synthetic_imagenet, shard_imagenet
from tools.shard_writer import TarIndexWriter
from train import checkpoint as ckpt
from train import fault
from train.config import OptimConfig, load_config, to_dict
from train.optim import build_optimizer

ROOT = Path(__file__).resolve().parent.parent
BATCH = 8  # the tiny runs' batch size
# A tiny training run: ResNet-18 at 32 px, DALI on the CPU, deterministic, EMA and mixup on.
# ImageNet's mean and std of RGB in [0, 1], written out here rather than read from the code under test
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

TINY = ["data.loader=dali", f"data.batch_size={BATCH}", "data.image_size=32", "data.val_image_size=32",
        "model.name=resnet18", "model.num_classes=10", "train.log_every=2", "optim.warmup_epochs=0.5",
        "optim.base_lr=2.0", "optim.mixup_alpha=0.2", "optim.ema_decay=0.9", "train.deterministic=true"]
# A tiny run without data: the synthetic loader (8 steps an epoch), 2 epochs.
SYNTH = ["data.loader=synthetic", f"data.batch_size={BATCH}", "data.image_size=32", "data.val_image_size=32",
         "model.name=resnet18", "model.num_classes=10", "train.epochs=2", "optim.warmup_epochs=0"]

# The reference run the resume tests compare against: 3 epochs, resized at epoch 2, two threads
# (a run compared with it must use as many: the kernels' sums depend on the thread count).
REFERENCE = [*TINY, "data.num_threads=2", "train.epochs=3", "train.resize=[[0, 32], [2, 40]]"]
REFERENCE_THREADS = 2


# --- processes: the one way a test starts one ---------------------------------------------------

def process_env(threads: int | None = REFERENCE_THREADS, **extra: str) -> dict:
    """The environment of a test's subprocess: the project importable (first, before whatever the
    caller had: the GPU machine's .devsite/), unbuffered output, `threads` OpenMP threads (None:
    the caller's setting) that sleep while they wait (unless the caller says otherwise; the
    Makefile's reason), no fault injection unless `extra` sets it."""
    env = {"OMP_WAIT_POLICY": "PASSIVE", **{k: v for k, v in os.environ.items() if k != fault.ENV}}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return {**env, **extra}


def run_python(*argv, timeout: float, threads: int | None = REFERENCE_THREADS, env: dict | None = None,
               cwd=None) -> subprocess.CompletedProcess:
    """`python *argv` in a new process (`-m train ...`, `-c CODE ...`, a script), text output
    captured; a process still running after `timeout` seconds is killed and fails the test."""
    return subprocess.run([sys.executable, *map(str, argv)], env=process_env(threads, **(env or {})), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def started(*argv, threads: int | None = REFERENCE_THREADS) -> Iterator[subprocess.Popen]:
    """`python *argv` started, not waited for, with stdout and stderr merged into `.stdout` (for
    tests that signal it on a given line). Stopped on leaving the block if still running (SIGTERM, then
    SIGKILL after 10 s), so a test that fails or times out (pytest-timeout) leaves no process behind."""
    proc = subprocess.Popen([sys.executable, *map(str, argv)], env=process_env(threads), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:  # SIGTERM first: a process that runs others (gpu_check) stops them
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
        proc.stdout.close()


def train(args, timeout: float = 240, threads: int | None = REFERENCE_THREADS, env: dict | None = None,
          code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m train args` in a new process (or `python -c code args`)."""
    head = ["-c", code] if code else ["-m", "train"]
    return run_python(*head, *args, timeout=timeout, threads=threads, env=env)


def ok(r: subprocess.CompletedProcess) -> str:
    """A process that exited 0: its output, stdout then stderr."""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


@contextmanager
def restored_process_state() -> Iterator[None]:
    """Put back, on leaving the block, what a trainer run (or its set_determinism) changes in this
    process: the host and CUDA RNGs, deterministic mode, cuDNN autotuning and TF32, the torch thread
    count, the SIGINT, SIGTERM and SIGUSR1 handlers, and the environment."""
    torch_threads = torch.get_num_threads()
    host_rngs = random.getstate(), np.random.get_state()
    modes = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    environ = dict(os.environ)
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            yield
    finally:
        torch.set_num_threads(torch_threads)
        random.setstate(host_rngs[0])
        np.random.set_state(host_rngs[1])
        torch.use_deterministic_algorithms(modes[0], warn_only=modes[1])
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = modes[2:]
        for s, h in handlers.items():
            signal.signal(s, h)
        for key in set(os.environ) - set(environ):  # only what changed: other threads may read it meanwhile
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def call_main(main, argv, threads: int = 1) -> subprocess.CompletedProcess:
    """`main(argv)` run in this process as `sys.exit(main())` would run it (argparse's exit 2 on a
    bad flag, and a SystemExit("error: ...") as its line on stderr and exit 1, included), on
    `threads` torch threads: its exit code and what it printed, as `run_python` gives them for a
    new process. What a trainer run changes in the process is put back (restored_process_state)."""
    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with restored_process_state():
        torch.set_num_threads(threads)
        os.environ.pop(fault.ENV, None)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def drain(loader) -> None:
    """Read epoch 0 of `loader` to its end (to meet whatever error it holds)."""
    for _ in loader.epoch(0):
        pass


SLOW_TIMEOUT_S = 900  # pyproject's timeout is for the rest


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """10 classes x 20 train (+ the 5 oddities), 5 val per class (flat + CSV), with archives."""
    out = tmp_path_factory.mktemp("syn") / "imagenet"
    return make_synthetic_imagenet.make_dataset(out, make_synthetic_imagenet.DatasetSpec(oddities=True, archives=True),
                                                workers=2)


@pytest.fixture(scope="session")
def shards(synthetic, tmp_path_factory):
    """The synthetic dataset sharded at 40 samples per shard (train: 6 shards, val: 2)."""
    out = tmp_path_factory.mktemp("shards") / "out"
    rc = shard_imagenet.main(["--src", str(synthetic.root), "--out", str(out),
                              "--samples-per-shard", "40", "--workers", "2"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def reference_run(shards, tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted REFERENCE run on the shards fixture: (run_dir, its output)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    return run_dir, ok(train([*REFERENCE, f"data.path={shards}", f"run_dir={run_dir}"]))


def meta_model(**cfg) -> torch.nn.Module:
    """A model of `ModelConfig(**cfg)` with shapes only, no memory or init cost: fast for big ones."""
    with torch.device("meta"):
        return build_model(ModelConfig(**cfg))


def assert_state_layout(state: dict, count: int, shapes: dict) -> None:
    """A state dict with `count` entries, holding each key of `shapes` at its shape."""
    assert len(state) == count
    for key, shape in shapes.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def shard_labels(folder: Path, split: str) -> list[int]:
    """A split's labels in shard order, read with webdataset (not the project's loaders)."""
    info = load_split(folder, split)
    return [int(s["cls"]) for s in wds.WebDataset([str(f) for f in info.files], shardshuffle=False)]


def steps_per_epoch(shards: Path, ranks: int = 1, batch: int = BATCH) -> int:
    """Training steps per epoch on `shards`: the smallest rank's full batches."""
    return load_split(shards, "train").num_samples // ranks // batch


# --- checkpoints -------------------------------------------------------------------------------

def final_state(run_dir) -> dict:
    """The newest checkpoint of a run."""
    return ckpt.load_checkpoint(ckpt.list_checkpoints(run_dir)[-1])


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


def make_state(epoch: int, step: int) -> dict:
    """A real checkpoint state (ResNet-18 after one SGD step) at (epoch, step)."""
    torch.manual_seed(epoch)
    model = build_model(ModelConfig(name="resnet18", num_classes=10))
    opt = build_optimizer(model, OptimConfig(), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()  # momentum buffers exist
    cfg = load_config(None, ["data.loader=synthetic", "model.name=resnet18"])
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": None, "ema": None,
            "selected_weights": "model", "epoch": epoch, "step_in_epoch": 0, "global_step": step,
            "config": to_dict(cfg), "rng": ckpt.rng_state(torch.device("cpu")),
            "best": {"top1": 50.0, "top5": 90.0, "epoch": 1, "weights": "model"},
            "history": [{"epoch": 0, "loss": 2.0}]}


class Evil:
    """Pickles to a call of os.system: what a hostile checkpoint does on an unsafe load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def digests(folder: Path) -> dict:
    """sha256 of every file directly in `folder`, by name."""
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


# --- hand-made shards and damage --------------------------------------------------------------

def jpeg_bytes(size=(40, 30), colour=(200, 10, 10)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, colour).save(b, "JPEG")
    return b.getvalue()


def make_shard(out: Path, samples, index=True, split="train") -> Path:
    """One shard `x-{split}-000000.tar` (+ index, + `_info.json` with 2 classes) in a new folder
    `out`, from (key, [(ext, bytes)]) pairs."""
    out.mkdir()
    name = f"x-{split}-000000"
    with open(out / f"{name}.tar", "wb") as f:
        w = TarIndexWriter(f)
        for key, files in samples:
            w.add_sample(key, files)
        w.close()
    if index:
        (out / f"{name}.idx").write_text(format_idx(w.samples))
    entry = {"name": split, "filenames": [f"{name}.tar"], "shard_lengths": [len(samples)]}
    (out / "_info.json").write_text(json.dumps({"classes": ["a", "b"], "splits": {split: entry}}))
    return out


GOOD = [(f"k{i}", [("jpg", jpeg_bytes()), ("cls", b"1")]) for i in range(8)]
BAD = {  # a bad sample's files -> what the error names
    "corrupt jpg": ([("jpg", jpeg_bytes()[:120]), ("cls", b"0")], "kbad: jpg does not decode"),
    "not an image": ([("jpg", b"hello" * 20), ("cls", b"0")], "kbad: jpg does not decode"),
    "missing cls": ([("jpg", jpeg_bytes())], "kbad has no cls"),
    "label out of range": ([("jpg", jpeg_bytes()), ("cls", b"7")], "kbad: cls '7' is out of range"),
    "label not an integer": ([("jpg", jpeg_bytes()), ("cls", b"dog")], "kbad: cls 'dog' is not"),
}


def tamper_index(idx: Path, sample: int = 1) -> None:
    """Move one sample's jpg offset in an index by a tar block: the index no longer matches its tar."""
    lines = idx.read_text().splitlines()
    offset = lines[1 + sample].split()[1]
    lines[1 + sample] = lines[1 + sample].replace(f"jpg {offset} ", f"jpg {int(offset) + 512} ", 1)
    idx.write_text("\n".join(lines) + "\n")


def truncate(tar: Path, size: int) -> None:
    """Keep the first `size` bytes of a file (a copy cut short)."""
    tar.write_bytes(tar.read_bytes()[:size])
