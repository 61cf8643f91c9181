"""The benchmarks: the verdict logic on constructed figures, and each tool at tiny sizes."""

import io
import json
import runpy
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import GOOD, IMAGENET_MEAN, IMAGENET_STD, call_main, jpeg_bytes, make_shard, started, truncate
from PIL import Image

from benchmarks import pipeline_bench, shard_bench, suite, torchvision_check
from benchmarks.common import build_any_loader
from benchmarks.cpu_time import descendants, tree_cpu_s
from benchmarks.timing import endless
from benchmarks.verdict import ADVICE, CONTENTION, mfu, verdict
from pipeline import throughput
from pipeline.normalize import model_input
from pipeline.shards import scan_tar
from train.summary import loop_verdict, wait_histogram

SMALL = ["--batch-size", "8", "--image-size", "32", "--warmup", "1", "--steps", "2", "--repeats", "2",
         "--threads", "2", "--shuffle-buffer", "16"]


def test_verdict_slow_decode_is_input_bound_decode():
    v = verdict(model_img_s=1000, stages={"read": 50000, "decode": 400, "train": 350}, end_to_end_img_s=340)
    assert v["bound"] == "input-bound: decode" and v["shortfall"] == pytest.approx(2.5)
    assert "hw_decoder_load" in v["advice"] and v["efficiency"] == pytest.approx(0.34)


def test_verdict_slow_model_is_compute_bound():
    v = verdict(model_img_s=300, stages={"read": 50000, "decode": 2000, "train": 1500}, end_to_end_img_s=298)
    assert v["bound"] == "compute-bound" and v["limit"] == "compute"


def test_verdict_other_stages():
    assert verdict(1000, {"read": 500, "decode": 400, "train": 300}, 290)["bound"] == "input-bound: read"
    assert verdict(1000, {"read": 9e4, "decode": 3000, "train": 600}, 590)["bound"] == "input-bound: augment"
    v = verdict(1000, {"read": 9e4, "decode": 3000, "train": 2000}, 700)  # each stage fast alone
    assert v["bound"] == "input-bound: contention" and v["shortfall"] == pytest.approx(1000 / 700)
    assert v["advice"] == CONTENTION["cpu"] and "cores" in v["advice"]
    assert verdict(1000, {"read": 9e4, "decode": 3000, "train": 2000}, 700, "cuda")["advice"] == CONTENTION["cuda"]
    # end to end alone (no stage measured): the limit is not named, nor blamed on contention
    assert verdict(1000, {}, 700)["bound"] == "input-bound (stages not measured)"
    assert verdict(1000, {}, 990)["bound"] == "compute-bound"


def test_trainer_verdict_and_wait_histogram():
    assert loop_verdict(0.01) == "compute-bound" and loop_verdict(0.3).startswith("input-bound (30%")
    h = wait_histogram([{"data_wait_hist": [1, 2, 0, 0, 0, 3]}, {"data_wait_hist": [0, 1, 0, 0, 0, 0]}])
    assert h == {"<0.1": 1, "0.1-1": 3, "1-5": 0, "5-20": 0, "20-100": 0, ">=100": 3}


def test_mfu():
    assert mfu(4.1e9, 1000, 3 * 4.1e12) == pytest.approx(1.0)  # training = 3x forward FLOPs


class ShortEpochs:
    """A loader on a virtual clock: each batch takes 1 s, and an epoch's start 100 s more (a
    pipeline built, workers started). Logs each epoch start, each batch and each clock read."""

    def __init__(self, batches: int, batch_size: int):
        self.batches, self.batch_size, self.now, self.log = batches, batch_size, 0.0, []

    def epoch(self, e: int):
        self.now += 100.0
        self.log.append(("start", e))
        for i in range(self.batches):
            self.now += 1.0
            self.log.append(("batch", e, i))
            yield [0] * self.batch_size

    def clock(self) -> float:
        self.log.append(("clock",))
        return self.now


@pytest.mark.parametrize(("batches", "warmup", "steps", "repeats"), [(7, 2, 3, 5), (4, 0, 3, 3), (30, 3, 10, 3)])
def test_timed_windows_never_hold_an_epoch_start(monkeypatch, batches, warmup, steps, repeats):
    fake = ShortEpochs(batches, batch_size=8)
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=fake.clock))
    r = throughput.rate(endless(fake.epoch), len, torch.device("cpu"), warmup, steps, repeats, epoch_batches=batches)
    clocks = [i for i, event in enumerate(fake.log) if event == ("clock",)]
    windows = [fake.log[a + 1:b] for a, b in zip(clocks[::2], clocks[1::2])]
    assert len(windows) == repeats
    for window in windows:  # `steps` batches of one epoch, and no epoch start among them
        assert len(window) == steps and all(event[0] == "batch" for event in window)
        assert len({event[1] for event in window}) == 1
    assert r["repeats"] == [8.0] * repeats  # 8 images a virtual second: the loader's steady rate


def test_rate_without_epochs_times_back_to_back_and_refuses_short_epochs():
    pulled = []
    batches = iter(lambda: pulled.append(1) or [0, 0], None)  # endless, no epochs
    r = throughput.rate(batches, len, torch.device("cpu"), warmup=2, steps=3, repeats=4)
    assert len(pulled) == 2 + 3 * 4 and len(r["repeats"]) == 4
    with pytest.raises(ValueError, match="epoch of 4 batches"):  # one untimed + 4 timed > 4
        throughput.rate(endless(ShortEpochs(4, 8).epoch), len, torch.device("cpu"), 0, 4, 1, epoch_batches=4)


def forcing(real, forced, seen=None):
    """`real` (a rate function), whose reported rate is replaced by the next of `forced`, and its
    rate per CPU-second by half that (two cores busy: a window this short may use less CPU than
    the clock's tick, which the real figure reports as None); each call's torch thread count is
    appended to `seen` when given."""
    def rate(*args, **kwargs):
        if seen is not None:
            seen.append(torch.get_num_threads())
        per_s = next(forced)
        return {**real(*args, **kwargs), "per_s": per_s, "per_cpu_s": per_s / 2}
    return rate


def test_pipeline_bench_writes_every_field(shards, tmp_path, monkeypatch):
    # Every stage runs and is timed; the rate it reports is then replaced by a known one, so the
    # ratios have values of their own: DALI's train rate 300 over the baseline's 100 and plain's 150.
    forced = iter([9000.0, 900.0, 300.0, 8000.0, 800.0, 100.0, 7000.0, 700.0, 150.0])  # per loader: read, decode, train
    threads = []
    monkeypatch.setattr(pipeline_bench, "rate", forcing(pipeline_bench.rate, forced, threads))
    out = tmp_path / "p.json"
    args = ["--data", str(shards), "--device", "cpu", "--json", str(out), "--loaders", "dali,baseline,plain",
            "--stages", "read,decode,train", *SMALL]
    torch_threads = torch.get_num_threads()
    assert call_main(pipeline_bench.main, args, threads=2).returncode == 0
    assert threads == [1] * 9  # torch on one thread while each stage was timed ...
    assert torch.get_num_threads() == torch_threads  # ... and as it was afterwards
    r = json.loads(out.read_text())
    assert r["provenance"]["git_commit"] and r["provenance"]["dali"] and r["provenance"]["cores"]
    for name in ("dali", "baseline", "plain"):
        loader = r["loaders"][name]
        assert loader["hand_off"] and loader["resize"] and set(loader["threads"]) == {"2"}
        stages = loader["threads"]["2"]
        assert set(stages) == {"read", "decode", "train"} and loader["scaling"]["2"] == {s: 1.0 for s in stages}
        for s in stages.values():
            assert min(s["repeats_img_per_s"]) > 0 and len(s["repeats_img_per_s"]) == 2
            # every figure per CPU-second too, and the busy cores that implies
            assert s["img_per_cpu_s"] == s["img_per_s"] / 2 and s["cpu_cores_busy"] == pytest.approx(2.0)
        assert stages["read"]["mb_per_s"] > 0
        t = stages["train"]
        assert (t["batch_shape"], t["dtype"], t["memory_format"]) == ([8, 3, 32, 32], "uint8", "channels_last")
    assert (r["loaders"]["baseline"]["hand_off_dtype"], r["loaders"]["plain"]["hand_off_dtype"]) == ("uint8", "uint8")
    assert r["loaders"]["dali"]["threads"]["2"]["train"]["img_per_s"] == 300.0
    assert r["ratios"]["dali/baseline"]["2"]["train"]["img_per_s"] == 3.0
    assert r["ratios"]["dali/plain"]["2"]["train"]["img_per_s"] == 2.0


def test_pipeline_bench_sweeps_threads_and_reports_scaling(shards, tmp_path, monkeypatch):
    # Rates replaced in the order measured: the baseline at 1 worker (100), then at 2 (180): 1.8x.
    forced = iter([100.0, 180.0])
    monkeypatch.setattr(pipeline_bench, "rate", forcing(pipeline_bench.rate, forced))
    out = tmp_path / "p.json"
    args = ["--data", str(shards), "--device", "cpu", "--json", str(out), "--loaders", "baseline",
            "--stages", "train", *SMALL, "--threads", "1,2"]
    r = call_main(pipeline_bench.main, args)
    assert r.returncode == 0, r.stderr
    b = json.loads(out.read_text())["loaders"]["baseline"]
    assert [b["threads"][n]["train"]["img_per_s"] for n in ("1", "2")] == [100.0, 180.0]
    assert b["scaling"] == {"1": {"train": 1.0}, "2": {"train": 1.8}}
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("baseline  train")][-2:]
    assert [(row[2], row[3], row[4], row[-1]) for row in rows] == [("1", "uint8", "100.0", "1.00x"),
                                                                   ("2", "uint8", "180.0", "1.80x")]


def test_pipeline_bench_on_timm_layout_needs_no_class_list(shards, tmp_path):
    timm = tmp_path / "timm"
    timm.mkdir()
    for f in shards.glob("*-train-*.tar"):
        shutil.copy(f, timm / f.name)  # timm's imagenet-1k-wds: no _info.json, no class list
    args = ["--data", str(timm), "--device", "cpu", "--loaders", "dali", "--stages", "train", *SMALL]
    assert pipeline_bench.main([*args, "--num-classes", "10"]) == 0
    assert pipeline_bench.main(args) == 0  # default: ImageNet's 1000 classes


def test_rate_is_the_median_of_timed_repeats(monkeypatch):
    """Batches of 4 items on a fake clock: after an untimed warm-up batch, repeats of 2 batches
    taking 1, 4 and 2 s give 8, 2 and 4 items/s, median 4."""
    clock, durations = [0.0], iter([100.0, 0.5, 0.5, 2.0, 2.0, 1.0, 1.0])

    def batches():
        while True:
            clock[0] += next(durations)
            yield [0] * 4

    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    r = throughput.rate(batches(), len, torch.device("cpu"), warmup=1, steps=2, repeats=3)
    assert r == {"per_s": 4.0, "repeats": [8.0, 2.0, 4.0]}


def test_suite_writes_json_and_plot(shards, tmp_path, monkeypatch):
    # Everything runs and is timed; each rate is then replaced by a known one, in the order measured:
    # the model alone; per loader its read and train stages, then end to end.
    forced = iter([1000.0, 50000.0, 400.0, 380.0, 40000.0, 200.0, 190.0])
    monkeypatch.setattr(suite, "rate", forcing(suite.rate, forced))
    monkeypatch.setattr(pipeline_bench, "rate", forcing(pipeline_bench.rate, forced))
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    args = ["--data", str(shards), "--device", "cpu", "--model", "resnet18", "--json", str(out),
            "--plot", str(png), "--stages", "read,train", *SMALL]
    assert suite.main(args) == 0
    r = json.loads(out.read_text())
    assert r["model_only"]["per_s"] == 1000.0 and r["provenance"]["git_commit"]
    assert set(r["pipeline_only"]) == set(r["end_to_end"]) == {"dali", "baseline"}
    assert r["pipeline_only"]["baseline"]["train"]["img_per_s"] == 200.0 and r["end_to_end"]["dali"]["per_s"] == 380.0
    # DALI's train stage (400 img/s) is below the model's 1000: input-bound on augmentation, 2.5x short
    assert r["verdict"] == {"loader": "dali", "bound": "input-bound: augment", "limit": "augment",
                            "efficiency": pytest.approx(0.38), "shortfall": 2.5, "advice": ADVICE["augment"]}
    m = r["mfu"]
    assert m["peak_source"].startswith("measured") and m["peak_flops"] > 0
    # training is 3x the forward FLOPs (README): 3 x FLOPs/img x img/s over the peak
    assert m["model_only"] == pytest.approx(3 * m["flops_per_img_forward"] * 1000.0 / m["peak_flops"])
    assert m["end_to_end_baseline"] == pytest.approx(3 * m["flops_per_img_forward"] * 190.0 / m["peak_flops"])
    assert m["measured_peak_flops"] == m["peak_flops"]  # a CPU has no data sheet: the measured peak is the peak
    assert m["of_measured_peak"] == {k: m[k] for k in ("model_only", "end_to_end_dali", "end_to_end_baseline")}
    for e in r["end_to_end"].values():  # timed repeats, as measured
        assert len(e["repeats"]) == 2 and min(e["repeats"]) > 0
    no_gpu = {"torch_peak_allocated_mb": None, "device_used_mb": None}  # said plainly, not zeros
    assert r["model_only"]["gpu_memory"] == r["end_to_end"]["dali"]["gpu_memory"] == no_gpu
    assert r["pipeline_only"]["baseline"]["train"]["gpu_memory"] == no_gpu
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_suite_refuses_an_epoch_too_short_for_a_window(shards, capsys):
    args = ["--data", str(shards), "--device", "cpu", "--model", "resnet18", *SMALL, "--steps", "1000"]
    with pytest.raises(SystemExit) as e:
        suite.main(args)
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message
    assert all(flag in message for flag in ("--steps", "--warmup", "--batch-size"))
    assert "model only" not in capsys.readouterr().out  # refused before anything was timed


def test_suite_times_the_model_alone(shards, tmp_path):
    out = tmp_path / "m.json"
    assert suite.main(["--data", str(shards), "--device", "cpu", "--model", "resnet18", "--loaders", "",
                       "--json", str(out), *SMALL]) == 0
    r = json.loads(out.read_text())
    assert r["model_only"]["per_s"] > 0 and r["pipeline_only"] == r["end_to_end"] == {} and "verdict" not in r
    assert set(r["mfu"]["of_measured_peak"]) == {"model_only"} and r["steps"] == 2


def test_shard_bench_runs(synthetic, tmp_path, monkeypatch):
    # Every step runs and is timed; the median it reports is then replaced by a known one, so the
    # ratios have values of their own: header 3 s over tar 2 s, PIL 4 s over decode 5 s.
    forced = iter([2.0, 4.0, 3.0, 5.0])  # tar, pil_decode, shard_header, shard_decode, in the order timed
    real_timed = shard_bench.timed
    monkeypatch.setattr(shard_bench, "timed", lambda fn, repeats: (real_timed(fn, repeats), next(forced))[1])
    out = tmp_path / "b.json"
    assert shard_bench.main(["--src", str(synthetic.root), "--repeats", "1", "--workers", "2",
                             "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    n = sum(1 for _ in (synthetic.root / "train").rglob("*.JPEG"))
    assert r["images"] == n and r["provenance"]["git_commit"]
    assert r["seconds"] == {"tar": 2.0, "pil_decode": 4.0, "shard_header": 3.0, "shard_decode": 5.0}
    assert (r["header_over_tar"], r["decode_vs_pil"]) == (1.5, 0.8) and r["img_per_s"]["tar"] == n / 2.0


def test_suite_times_distillation_steps():
    """--teacher: the suite's timed steps are distillation steps (the teacher's forward in each)."""
    import torch

    cpu = torch.device("cpu")
    parts = suite.step_parts(suite.parse_args(["--data", "x", "--model", "resnet18", "--teacher", "resnet18"]),
                             cpu, 10)
    assert parts.distiller is not None and not parts.distiller.teacher.training
    assert not any(p.requires_grad for p in parts.distiller.teacher.parameters())
    assert suite.step_parts(suite.parse_args(["--data", "x", "--model", "resnet18"]), cpu, 10).distiller is None


def test_python_m_benchmarks_is_the_suite(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m benchmarks", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("benchmarks", run_name="__main__")
    assert e.value.code == 0 and "--loaders" in capsys.readouterr().out


def test_torchvision_check_never_says_ok_unchecked(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    assert torchvision_check.main(["--device", "cpu"]) == torchvision_check.NOT_CHECKED == 3
    out = capsys.readouterr().out
    assert out.startswith("torchvision check: NOT CHECKED (torchvision not importable: ") and "OK" not in out


# --- CPU time of a process tree ----------------------------------------------------------------

# A process tree of known CPU time: the root burns 0.4 CPU-s on a thread, its child (idle, like the
# forkserver) starts a grandchild (like a DataLoader worker) that burns 0.6 CPU-s. Each process
# reports its own CPU clock (time.process_time, all its threads) once done, then waits: the tree's
# measure must equal the sum of what they report.
BURN = """
import sys, time, subprocess, threading
def burn(seconds):
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass
role = sys.argv[1]
if role == "grandchild":
    burn(0.6)
    print(time.process_time(), flush=True)
    sys.stdin.read()  # until the parent ends
elif role == "child":
    grandchild = subprocess.Popen([sys.executable, __file__, "grandchild"], stdin=subprocess.PIPE, stdout=None)
    print(time.process_time(), flush=True)
    sys.stdin.read()
else:
    child = subprocess.Popen([sys.executable, __file__, "child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    worker = threading.Thread(target=burn, args=(0.4,))
    worker.start()
    worker.join()
    child_s, grandchild_s = child.stdout.readline(), child.stdout.readline()
    print("times", time.process_time(), child_s.strip(), grandchild_s.strip(), flush=True)
    time.sleep(120)
"""


def test_tree_cpu_s_counts_every_thread_and_live_descendant(tmp_path):
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    with started(script, "root", threads=None) as proc:
        line = proc.stdout.readline()
        assert line.startswith("times"), line
        reported = [float(x) for x in line.split()[1:]]  # root, child, grandchild: each its own clock
        assert reported[0] >= 0.4 and reported[2] >= 0.6
        assert len(descendants(proc.pid)) == 2
        measured = tree_cpu_s(proc.pid)
    # /proc counts in clock ticks (10 ms) per process, and the processes read their clocks just before
    assert measured == pytest.approx(sum(reported), abs=0.05)


def test_rate_reads_the_cpu_clock_at_each_window_edge(monkeypatch):
    """Batches of 8 taking 1 wall-second and 2 CPU-seconds each: 8 img/s and 4 img per CPU-second,
    with both clocks read at the edges of every window and nowhere else."""
    fake = ShortEpochs(5, batch_size=8)
    cpu = {"s": 0.0}

    def batches(e):
        for b in fake.epoch(e):
            cpu["s"] += 2.0
            yield b

    def cpu_clock():
        fake.log.append(("cpu",))
        return cpu["s"]

    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=fake.clock))
    r = throughput.rate(endless(batches), len, torch.device("cpu"), 1, 3, 2, epoch_batches=5, cpu_clock=cpu_clock)
    assert (r["per_s"], r["per_cpu_s"], r["repeats_per_cpu_s"]) == (8.0, 4.0, [4.0, 4.0])
    edges = [e[0] for e in fake.log if e[0] in ("cpu", "clock")]
    assert edges == ["cpu", "clock", "clock", "cpu"] * 2  # the CPU clock just outside the wall clock
    assert "per_cpu_s" not in throughput.rate(endless(fake.epoch), len, torch.device("cpu"), 1, 3, 1, 5)


# --- plain: webdataset's documented recipe ------------------------------------------------------

def plain_loader(data, output: str, workers: int = 2, batch: int = 4):
    args = pipeline_bench.parse_args(["--data", str(data), "--batch-size", str(batch), "--image-size", "24",
                                      "--shuffle-buffer", "8", "--output", output])
    return build_any_loader(args, "plain", "train", torch.device("cpu"), 2, workers)




@pytest.mark.parametrize("output", ["uint8", "float16"])
def test_plain_loader_normalizes_as_imagenet_mean_std(tmp_path, output):
    """Every image one solid colour: any crop, resize or flip of it is that colour, so each
    pixel must be (colour / 255 - mean) / std, computed here from the decoded JPEG (a uint8
    hand-off after the training step's normalize)."""
    colour = (200, 30, 90)
    jpg = jpeg_bytes((50, 40), colour)
    data = make_shard(tmp_path / "d", [(f"k{i}", [("jpg", jpg), ("cls", str(i % 2).encode())]) for i in range(8)])
    decoded = np.array(Image.open(io.BytesIO(jpg)).convert("RGB"))[0, 0]  # the JPEG's colour, as decoded
    expected = torch.tensor((decoded / 255 - IMAGENET_MEAN) / IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    loader = plain_loader(data, output, workers=1)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 2
    for images, labels in batches:
        assert images.shape == (4, 3, 24, 24) and images.dtype == getattr(torch, output)
        # uint8 handed on as the baseline's (channels-last); float16 normalized in the worker, NCHW
        assert images.is_contiguous(memory_format=torch.channels_last) == (output == "uint8")
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
        assert (model_input(images).float() - expected).abs().max() <= 2e-2  # fp16 rounding


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 4 workers on 2 cores: slow, and correct
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_plain_epoch_length_is_each_workers_full_batches(shards, workers):
    """The epoch length the benchmark's windows rely on equals the batches a full pass yields
    (webdataset deals whole shards to workers, each drops its last partial batch)."""
    loader = plain_loader(shards, "uint8", workers=workers, batch=16)
    assert sum(1 for _ in loader.webloader("read")) == len(loader)


def test_plain_train_batches_are_normalized_random_crops(shards):
    images, labels = next(plain_loader(shards, "float16", batch=8).epoch(0))
    assert images.shape == (8, 3, 24, 24) and 0 <= labels.min() and labels.max() < 10
    # the range of a normalized [0, 1] pixel
    low, high = (0 - IMAGENET_MEAN) / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD
    for c in range(3):
        assert low[c] - 1e-2 <= images[:, c].min() and images[:, c].max() <= high[c] + 1e-2  # fp16 rounding
    assert images.float().std() > 0.1  # real pictures, not a constant


def test_plain_refuses_more_workers_than_shards(tmp_path):
    data = make_shard(tmp_path / "d", GOOD)  # one shard
    with pytest.raises(ValueError, match="1 shards for 2 workers"):
        plain_loader(data, "uint8", workers=2)


# --- bad input: one line, never a traceback ------------------------------------------------------

def one_error_line(r, *needles: str) -> str:
    """The one `error:` line of a command that exited 2, last on stderr, holding every needle
    (DALI says beforehand that it is looking for the bad sample); no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert errors == r.stderr.strip().splitlines()[-1:] and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert all(n in errors[0] for n in needles), errors[0]
    return errors[0]


FAST = ["--batch-size", "4", "--image-size", "24", "--warmup", "1", "--steps", "1", "--repeats", "1", "--threads", "1",
        "--shuffle-buffer", "4", "--device", "cpu"]


def test_benchmark_commands_name_a_missing_folder_in_one_line(tmp_path):
    nope = tmp_path / "nope"
    one_error_line(call_main(pipeline_bench.main, ["--data", nope, *FAST]), f"{nope}: data folder does not exist")
    one_error_line(call_main(suite.main, ["--data", nope, "--model", "resnet18", *FAST]), str(nope))
    one_error_line(call_main(shard_bench.main, ["--src", nope, "--repeats", "1"]), f"{nope}/train: no such folder")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    one_error_line(call_main(shard_bench.main, ["--src", tmp_path / "empty", "--repeats", "1"]),
                   f"{tmp_path}/empty/train: no train/<wnid>/*.JPEG files")


def test_benchmark_commands_name_a_folder_without_info_or_shards(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("no _info.json, no shards")
    for main, extra in ((pipeline_bench.main, []), (suite.main, ["--model", "resnet18"])):
        one_error_line(call_main(main, ["--data", tmp_path / "d", *extra, *FAST]), f"{tmp_path}/d: no shards")


def test_pipeline_bench_names_a_truncated_shard_caught_by_the_preflight(tmp_path):
    out = make_shard(tmp_path / "d", [(f"k{i}", GOOD[0][1]) for i in range(40)])
    tar = out / "x-train-000000.tar"
    truncate(tar, tar.stat().st_size // 2)
    for main, extra in ((pipeline_bench.main, ["--loaders", "dali,baseline,plain"]),
                        (suite.main, ["--model", "resnet18"])):
        one_error_line(call_main(main, ["--data", out, *extra, *FAST]), f"{tar}: truncated")


@pytest.mark.parametrize("loader", ["dali", "baseline", "plain"])
def test_pipeline_bench_names_a_truncated_shard_met_while_reading(tmp_path, loader):
    """Without an index, the pre-flight cannot see the cut: each loader meets it while reading."""
    out = make_shard(tmp_path / "d", [(f"k{i}", GOOD[0][1]) for i in range(40)], index=False)
    tar = out / "x-train-000000.tar"
    truncate(tar, scan_tar(tar)[30].offset + 100)  # inside the 16th sample's jpg
    r = call_main(pipeline_bench.main, ["--data", out, "--loaders", loader, "--stages", "train", *FAST])
    one_error_line(r, str(out), "x-train-000000.tar")
