"""The benchmarks: the verdict logic on constructed figures, and each tool at tiny sizes."""

import json
import runpy
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

from benchmarks import pipeline_bench, shard_bench, suite, torchvision_check
from benchmarks.timing import endless
from benchmarks.verdict import ADVICE, CONTENTION, mfu, verdict
from pipeline import throughput
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


def forcing(real, forced):
    """`real` (a rate function), whose reported rate is replaced by the next of `forced`."""
    return lambda *args: {**real(*args), "per_s": next(forced)}


def test_pipeline_bench_writes_every_field(shards, tmp_path, monkeypatch):
    # Every stage runs and is timed; the rate it reports is then replaced by a known one, so the
    # ratio has a value of its own: DALI's train rate 300 over the baseline's 100.
    forced = iter([9000.0, 900.0, 300.0, 8000.0, 800.0, 100.0])  # dali read, decode, train; baseline the same
    monkeypatch.setattr(pipeline_bench, "rate", forcing(pipeline_bench.rate, forced))
    out = tmp_path / "p.json"
    args = ["--data", str(shards), "--device", "cpu", "--json", str(out), "--loaders", "dali,baseline",
            "--stages", "read,decode,train", *SMALL]
    assert pipeline_bench.main(args) == 0
    r = json.loads(out.read_text())
    assert r["provenance"]["git_commit"] and r["provenance"]["dali"] and r["provenance"]["cores"]
    for name in ("dali", "baseline"):
        stages = r["loaders"][name]
        assert set(stages) == {"read", "decode", "train"}
        assert all(min(s["repeats_img_per_s"]) > 0 and len(s["repeats_img_per_s"]) == 2 for s in stages.values())
        assert stages["read"]["mb_per_s"] > 0
        t = stages["train"]
        assert (t["batch_shape"], t["dtype"], t["memory_format"]) == ([8, 3, 32, 32], "uint8", "channels_last")
    assert r["loaders"]["dali"]["train"]["img_per_s"] == 300.0 and r["dali_over_baseline_train"] == 3.0


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
