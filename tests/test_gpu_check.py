"""benchmarks.gpu_check: the GPU plan fits a visit, the figures come from each step's own files,
a timeout or a stop still leaves every row and the table, and the dry runs of both tiers run the
same plan on the CPU (tier 1 with DALI blocked)."""

import json
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import process_env, run_python, started

from benchmarks import gpu_check, gpu_data, gpu_figures, hw_decoder, preflight
from benchmarks.gpu_plan import plan

# A visit: 15 minutes in all, for the machine's start, tier 1 (carrying bundle part 1), the other
# parts' transfers and tier 2, with room to run tier 1 again (issue 15).
TIER_1_S, TIER_2_S, FILES_BACK = 180, 360, 8
ENV = process_env(threads=None)  # what the check gives its steps, less its PYTHONPATH additions


def names(steps) -> list[str]:
    return [s.name for s in steps]


def test_each_tiers_gpu_plan_fits_its_budget():
    tier1, tier2 = plan(1, dry=False, cores=16), plan(2, dry=False, cores=16)
    assert sum(s.budget_s for s in tier1) <= TIER_1_S
    assert sum(s.budget_s for s in tier2) <= TIER_2_S
    assert not {"preflight", "data"} - set(names(tier1)) and "bundle" in names(tier2)
    assert not any("dali" in s.needs for s in tier1)  # tier 1 needs no DALI
    # the dry run is the same plan, less the sweep's points
    assert names(plan(1, dry=True, cores=2)) == names(tier1)
    assert [n for n in names(plan(2, dry=True, cores=2)) if not n.startswith("sweep_")] == [
        n for n in names(tier2) if not n.startswith("sweep_")]


def test_only_picks_steps_with_the_set_up_they_need():
    assert names(plan(1, False, 16, {"torchvision"})) == ["preflight", "torchvision"]
    assert names(plan(1, False, 16, {"model_compile_max-autotune"})) == ["preflight", "model_compile_max-autotune"]
    assert names(plan(2, False, 16, {"startup"})) == ["bundle", "preflight_dali", "tiny", "startup"]
    assert names(plan(2, False, 16, {"hw_decoder"})) == ["bundle", "preflight_dali", "data_dali", "hw_decoder"]
    assert "model_compile_max-autotune" not in names(plan(1, False, 16))  # its own --only run


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    assert gpu_check.main(["--tier", "1", "--out", str(tmp_path), "--only", "suite_dali"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --only: not a tier-1 step: suite_dali")
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--tier", "3", "--out", str(tmp_path)])
    assert e.value.code == 2


def running(pid: int) -> bool:
    """Whether `pid` is alive (a killed process not yet reaped is a zombie: state Z)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_step_past_its_timeout_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)']); open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.monotonic()
    status, seconds = gpu_check.run_step([sys.executable, "-c", code], tmp_path / "x.log", 2.0, ENV)
    assert status == "timeout" and 2.0 <= seconds < 2.0 + gpu_check.KILL_GRACE_S + 5
    assert time.monotonic() - t0 < 15
    child = int(pidfile.read_text())
    time.sleep(0.5)
    assert not running(child)  # the grandchild went with its group
    exits = {code: gpu_check.run_step([sys.executable, "-c", f"raise SystemExit({code})"], tmp_path / "y.log", 30,
                                      ENV)[0] for code in (0, 1, 3)}
    assert exits == {0: "ok", 1: "failed", 3: "skipped"}  # 3: the step could not check (torchvision missing)


def test_no_time_left_skips_every_step_and_still_writes_the_table(tmp_path):
    out = tmp_path / "out"
    rc = gpu_check.main(["--tier", "1", "--dry-run", "--out", str(out), "--work", str(tmp_path / "w"),
                         "--deadline", "0"])
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert rc == 0 and [r["name"] for r in rows] == names(plan(1, dry=True, cores=2))
    assert all(r["status"] == "skipped" for r in rows) and "no time left" in rows[0]["figures"]["note"]
    table = (out / "table.md").read_text()
    assert all(f"| {r['name']} | skipped |" in table for r in rows)
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl", "table.md", "tier1.tar.gz"]
    assert len(list(out.iterdir())) <= FILES_BACK


def test_figures_come_from_each_steps_own_files(tmp_path):
    suite = {"model_only": {"per_s": 4000.0, "gpu_memory": {"torch_peak_allocated_mb": 30e3, "device_used_mb": None}},
             "pipeline_only": {"dali": {"decode": {"img_per_s": 12000.0}, "train": {"img_per_s": 9000.0}}},
             "end_to_end": {"dali": {"per_s": 3900.0, "gpu_memory": {"device_used_mb": 41e3}}},
             "verdict": {"efficiency": 0.975, "bound": "compute"},
             "mfu": {"model_only": 0.5, "peak_source": "data sheet", "measured_peak_flops": 8e14,
                     "of_measured_peak": {"model_only": 0.6}}}
    (tmp_path / "suite_dali.json").write_text(json.dumps(suite))
    f = gpu_figures.figures("suite_dali", tmp_path, "ok")
    assert f == {"model_only_img_s": 4000.0, "dali_decode_img_s": 12000.0, "dali_train_img_s": 9000.0,
                 "end_to_end_dali_img_s": 3900.0, "efficiency": 0.975, "verdict": "compute", "mfu_model_only": 0.5,
                 "measured_peak_tflops": 800.0, "mfu_measured_peak_model_only": 0.6,
                 "model_only_torch_peak_allocated_mb": 30e3, "end_to_end_dali_device_used_mb": 41e3}
    (tmp_path / "suite_baseline.json").write_text(json.dumps({"model_only": {"per_s": 3000.0}}))
    (tmp_path / "model_compile_default.json").write_text(json.dumps({"model_only": {"per_s": 3600.0}}))
    assert gpu_figures.figures("model_compile_default", tmp_path, "ok")["vs_eager"] == 1.2
    (tmp_path / "startup.json").write_text(json.dumps(
        {"first_batch_s": 4.2, "turnover_s": [0.01, 0.05], "median_batch_interval_s": 0.025, "img_per_s": 9e3}))
    assert gpu_figures.figures("startup", tmp_path, "ok")["worst_turnover_in_batches"] == 2.0  # 0.05 / 0.025
    (tmp_path / "hw_decoder.json").write_text(json.dumps({"loads": {
        "0": {"stages": {"decode": {"img_per_s": 5000.0}}, "engine_peak_pct": {"sm": 90.0}},
        "0.65": {"stages": {"decode": {"img_per_s": 11000.0}}, "engine_peak_pct": {"jpg": 70.0, "sm": 60.0}}}}))
    assert gpu_figures.figures("hw_decoder", tmp_path, "ok") == {
        "hw0_decode_img_s": 5000.0, "hw0.65_decode_img_s": 11000.0, "hw0.65_jpg_engine_peak_pct": 70.0}
    (tmp_path / "tests_gpu.log").write_text("....\n=== 4 passed, 1 skipped in 30.1s ===\n")
    assert gpu_figures.figures("tests_gpu", tmp_path, "ok") == {"result": "4 passed, 1 skipped in 30.1s"}
    (tmp_path / "torchvision.log").write_text("Traceback ...\nRuntimeError: boom\n")
    assert gpu_figures.figures("torchvision", tmp_path, "failed") == {
        "result": "RuntimeError: boom", "log_tail": "RuntimeError: boom"}
    assert gpu_figures.figures("suite_baseline", tmp_path / "nothing", "timeout") == {}


def test_data_made_for_the_same_request_is_reused_between_tiers(tmp_path, capsys):
    args = ["--tiny", "--out", str(tmp_path / "tiny"), "--json", str(tmp_path / "t.json"), "--",
            "--samples", "300", "--shards", "3"]
    assert gpu_data.main(args) == 0
    first = json.loads((tmp_path / "t.json").read_text())
    mtime = (tmp_path / "tiny" / "_info.json").stat().st_mtime_ns
    assert gpu_data.main(args) == 0
    again = json.loads((tmp_path / "t.json").read_text())
    assert (first["reused"], again["reused"]) == (False, True)
    assert (tmp_path / "tiny" / "_info.json").stat().st_mtime_ns == mtime
    assert again["splits"]["train"] == {"samples": 300, "shards": 3}
    assert gpu_data.main([*args[:-1], "4"]) == 0  # another request: made anew
    assert json.loads((tmp_path / "t.json").read_text())["splits"]["train"] == {"samples": 300, "shards": 4}


def rows_of(out) -> dict:
    return {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_a_stopped_check_keeps_the_rows_so_far_and_names_the_step_it_stopped(tmp_path):
    out = tmp_path / "out"
    with started("-m", "benchmarks.gpu_check", "--tier", "1", "--dry-run", "--out", out, "--work", tmp_path / "w",
                 threads=None) as p:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (tmp_path / "w" / "tier1" / "data.log").exists():
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        output = p.communicate(timeout=60)[0]
    r = rows_of(out)
    assert p.returncode == 1, output
    assert r["preflight"]["status"] == "ok" and r["data"]["status"] == "timeout"
    assert "stopped (SIGTERM)" in r["data"]["figures"]["note"]
    assert "| data | timeout |" in (out / "table.md").read_text()
    assert output.rstrip().endswith(open(out / "table.md").read().rstrip().splitlines()[-1])  # the table, last


@pytest.mark.slow
def test_tier_1_dry_run_runs_every_step_without_dali(tmp_path):
    out, work = tmp_path / "out", tmp_path / "w"
    rc = gpu_check.main(["--tier", "1", "--dry-run", "--out", str(out), "--work", str(work)])
    r = rows_of(out)
    log = (work / "tier1" / "suite_baseline.log").read_text()[-3000:]
    assert list(r) == names(plan(1, dry=True, cores=2)), r
    for name in ("preflight", "data", "suite_baseline", "tests_gpu"):
        assert r[name]["status"] == "ok", (name, r[name], log)
    assert r["model_compile_default"]["status"] == "skipped"
    assert r["torchvision"]["status"] in ("ok", "skipped") or "NOT CHECKED" in r["torchvision"]["figures"]["result"]
    assert r["data"]["figures"]["train_samples"] == 4 * 40 and r["data"]["figures"]["train_shards"] == 4
    suite = json.loads(next(p for p in (work / "tier1").glob("suite_baseline.json")).read_text())
    assert r["suite_baseline"]["figures"]["end_to_end_baseline_img_s"] == pytest.approx(
        suite["end_to_end"]["baseline"]["per_s"], rel=1e-3)
    assert "nvidia.dali" not in json.loads((work / "tier1" / "preflight.json").read_text())
    blocked = subprocess.run([sys.executable, "-c", "import nvidia.dali"], env=gpu_check.environment(
        gpu_check.Context(sys.executable, gpu_check.ROOT, work, out, None, True), 1), capture_output=True, text=True,
        timeout=60)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr  # what every tier-1 step ran under
    assert rc == (1 if any(x["status"] in ("failed", "timeout") for x in r.values()) else 0)


@pytest.mark.slow
def test_tier_2_dry_run_measures_dali(tmp_path):
    out, work = tmp_path / "out", tmp_path / "w"
    gpu_check.main(["--tier", "2", "--dry-run", "--out", str(out), "--work", str(work)])
    r = rows_of(out)
    assert list(r) == names(plan(2, dry=True, cores=2))
    assert r["bundle"]["status"] == "skipped"
    for name in ("preflight_dali", "data_dali", "suite_dali", "hw_decoder", "tiny", "startup", "tests_gpu_dali",
                 "sweep_hw0.3_t1"):
        assert r[name]["status"] == "ok", (name, r[name])
    f = r["suite_dali"]["figures"]
    assert {"model_only_img_s", "dali_read_img_s", "dali_decode_img_s", "dali_train_img_s",
            "end_to_end_dali_img_s", "efficiency"} <= set(f)
    assert {"hw0_decode_img_s", "hw0.65_decode_img_s"} <= set(r["hw_decoder"]["figures"])
    assert r["startup"]["figures"]["samples"] == 2000 and len(r["startup"]["figures"]["turnover_s"]) == 1


@pytest.mark.parametrize(("tier", "step", "expected"), [
    (1, "tests_gpu", ["test_gpu_run[baseline-fp16]", "test_gpu_run[baseline-4-channels]",
                      "test_each_rank_has_its_own_gpu_rng_and_the_same_host_one"]),
    (1, "tests_gpu_compile", ["test_gpu_run[baseline-compile]", "test_gpu_run[baseline-cuda-graphs]"]),
    (2, "tests_gpu_dali", ["test_gpu_run[dali-bf16]", "test_gpu_run[dali-fp16]", "test_gpu_run[dali-4-channels]",
                           "test_dali_mixed_decode_matches_cpu_decode_of_the_same_crops[hw_decoder_load_0]",
                           "test_dali_mixed_decode_matches_cpu_decode_of_the_same_crops[hw_decoder_load_1]",
                           "test_dali_mixed_resumes_mid_epoch_with_the_same_batches",
                           "test_dali_gpu_batch_is_on_the_gpu"]),
])
def test_each_gpu_test_step_selects_the_tests_it_names(tmp_path, tier, step, expected):
    (chosen,) = [s for s in plan(tier, dry=False, cores=16, only={step}) if s.name == step]
    c = gpu_check.Context(sys.executable, gpu_check.ROOT, tmp_path, tmp_path, None, False)
    r = run_python(*chosen.command(c)[1:], "--collect-only", timeout=120, threads=None)
    collected = [ln.rpartition("::")[2] for ln in r.stdout.splitlines() if "::" in ln]
    assert collected == expected, r.stdout[-2000:]


def test_an_only_rerun_keeps_the_other_steps_files(tmp_path):
    staging = tmp_path / "w" / "tier1"
    staging.mkdir(parents=True)
    (staging / "suite_baseline.json").write_text("{}")  # what model_compile's vs_eager reads
    (staging / "torchvision.log").write_text("an earlier run")
    gpu_check.main(["--tier", "1", "--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
                    "--only", "torchvision", "--deadline", "0"])
    assert (staging / "suite_baseline.json").exists() and not (staging / "torchvision.log").exists()


def test_preflight_names_what_is_missing(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert preflight.main(["--json", str(out), "--dry-run"]) == 0  # the CPU rehearsal needs no GPU
    r = json.loads(out.read_text())
    assert r["torch"] == torch.__version__ and r["missing"] == [] and "nvidia.dali" not in r
    if not torch.cuda.is_available():
        assert preflight.main(["--json", str(out), "--dali"]) == 1
        r = json.loads(out.read_text())
        assert r["gpu"] is None and r["dali"] and "a CUDA device (torch.cuda.is_available() is False)" in r["missing"]


def test_engine_watch_reads_the_jpeg_engines_column():
    dmon = ["# gpu     sm    mem    enc    dec    jpg    ofa\n", "# Idx      %      %      %      %      %      %\n",
            "    0     12      3      0      0     45      0\n", "    0     80      9      -      0     70      0\n"]
    watch = hw_decoder.EngineWatch()
    watch._proc = SimpleNamespace(stdout=iter(dmon))
    watch._read()
    assert watch.peaks() == {"sm": 80.0, "mem": 9.0, "enc": 0.0, "dec": 0.0, "jpg": 70.0, "ofa": 0.0}


def test_hw_decoder_compares_the_loads_stage_by_stage(shards, tmp_path):
    out = tmp_path / "hw.json"
    assert hw_decoder.main(["--data", str(shards), "--device", "cpu", "--batch-size", "8", "--image-size", "32",
                            "--threads", "1", "--warmup", "1", "--steps", "1", "--repeats", "1", "--json",
                            str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["loads"]) == {"0", "0.65"}
    for load in r["loads"].values():
        assert set(load["stages"]) == {"decode", "train"} and load["stages"]["decode"]["img_per_s"] > 0
    assert gpu_figures.hw_decoder_figures(r).keys() >= {"hw0_decode_img_s", "hw0.65_train_img_s"}
