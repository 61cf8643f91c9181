"""benchmarks/gpu_check.sh: its dry run (every step at toy size on the CPU), the rows and table it
writes as it goes, its budget, and what it records when time runs out."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable}
STATUSES = {"ok", "failed", "timeout", "skipped"}


def run(out: Path, *args: str, env=ENV, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def rows(out: Path) -> dict:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {r["name"]: r for r in map(json.loads, lines)}


def torchvision_imports() -> bool:
    p = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    return p.returncode == 0


def test_usage_errors_exit_2(tmp_path):
    assert run(tmp_path, "--bogus").returncode == 2
    assert subprocess.run(["bash", str(SCRIPT)], capture_output=True).returncode == 2


@pytest.mark.slow
def test_dry_run_runs_every_step_and_records_each_row(tmp_path):
    p = run(tmp_path, "--dry-run")
    r = rows(tmp_path)
    log = p.stdout[-4000:] + p.stderr[-2000:]
    expected = ["preflight", "data", "suite", "tiny", "startup", "torchvision", "tests_gpu", "train_compile_none",
                "train_channels4", "sweep_hw0.3_t1", "compile_default",
                "compile_reduce-overhead", "compile_max-autotune"]
    assert [n for n in r if n != "install"] == expected, log
    assert all(x["status"] in STATUSES and x["seconds"] >= 0 for x in r.values())
    for name in ("preflight", "data", "suite", "tiny", "startup", "tests_gpu", "sweep_hw0.3_t1",
                 "train_compile_none", "train_channels4"):
        assert r[name]["status"] == "ok", (name, r[name], log)
    for mode in ("default", "reduce-overhead", "max-autotune"):
        assert r[f"compile_{mode}"]["status"] == "skipped" and "dry run" in r[f"compile_{mode}"]["figures"]["note"]
    tv = r["torchvision"]
    if torchvision_imports():
        assert tv["status"] == "ok" and "OK" in tv["figures"]["result"]
    else:
        assert tv["status"] == "skipped" and "NOT CHECKED (torchvision not importable" in tv["figures"]["result"]
    # figures come from each step's own output
    assert r["data"]["figures"] == {"train": 4 * 40, "validation": 4 * 5, "shards": 4}
    assert r["tiny"]["figures"] == {"train": 2000, "shards": 8}
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert r["suite"]["figures"]["efficiency"] == pytest.approx(suite["verdict"]["efficiency"], rel=1e-3)
    assert {"model_only_img_s", "dali_decode_img_s", "end_to_end_dali_img_s", "end_to_end_baseline_img_s"} <= set(
        r["suite"]["figures"])
    s = r["startup"]["figures"]
    assert s["samples"] == 2000 and s["shards"] == 8 and len(s["turnover_s"]) == 1 and s["first_batch_s"] > 0
    assert "passed" in r["tests_gpu"]["figures"]["result"] or "skipped" in r["tests_gpu"]["figures"]["result"]
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {n} | {r[n]['status']} |" in table for n in expected)
    assert all((tmp_path / f"{n}.log").exists() for n in expected if r[n]["status"] != "skipped")
    bad = any(x["status"] in ("failed", "timeout") for x in r.values())
    assert p.returncode == (1 if bad else 0), log
    # the printed budget: every step's timeout, summing to at most the whole run's 540 s
    budget = re.search(r"budget: (\d+) s in all; per step: ([^;\n]*)", p.stdout)
    per_step = dict((k, int(v)) for k, v in (x.rsplit(" ", 1) for x in budget.group(2).split(", ")))
    assert int(budget.group(1)) == 540 and sum(per_step.values()) <= 540 and set(per_step) == set(r)


@pytest.mark.slow
def test_out_of_time_still_leaves_rows_and_table(tmp_path):
    env = {**ENV, "GPU_CHECK_BUDGET_S": "8"}
    p = run(tmp_path, "--quick", "--dry-run", env=env, timeout=120)
    r = rows(tmp_path)
    assert list(r) == [n for n in ("install", "preflight", "data", "suite") if n in r]
    late = r["suite"]
    assert late["status"] in ("timeout", "skipped") and late["seconds"] <= 2 * 8 + 6, late  # dry run: x2
    if late["status"] == "skipped":
        assert "no time left" in late["figures"]["note"] or "no shards" in late["figures"]["note"]
    assert p.returncode == (1 if any(x["status"] in ("failed", "timeout") for x in r.values()) else 0)
    assert "| suite |" in (tmp_path / "table.md").read_text()
