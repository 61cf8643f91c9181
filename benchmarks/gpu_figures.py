"""The GPU check's figures: what each step's JSON and log say, as one flat dict per row, and the
markdown table of the rows. Pure functions of the files a step left (unit-tested)."""

from __future__ import annotations

import json
import re
from pathlib import Path

SUMMARY = re.compile(r"\d+ (passed|failed|skipped|errors?|deselected)")


def _load(folder: Path, stem: str) -> dict | None:
    try:
        return json.loads((folder / f"{stem}.json").read_text())
    except (OSError, ValueError):
        return None


def _tail(folder: Path, name: str) -> list[str]:
    try:
        return (folder / f"{name}.log").read_text(errors="replace").strip().splitlines()[-40:]
    except OSError:
        return []


def suite_figures(j: dict) -> dict:
    """model only, each pipeline stage alone, end to end, input efficiency, verdict, MFU."""
    f = {"model_only_img_s": j["model_only"]["per_s"]}
    for loader, stages in j.get("pipeline_only", {}).items():
        f |= {f"{loader}_{stage}_img_s": v["img_per_s"] for stage, v in stages.items()}
    f |= {f"end_to_end_{loader}_img_s": v["per_s"] for loader, v in j.get("end_to_end", {}).items()}
    if j.get("verdict"):
        f |= {"efficiency": j["verdict"]["efficiency"], "verdict": j["verdict"]["bound"]}
    mfu = j.get("mfu") or {}
    f |= {f"mfu_{k}": v for k, v in mfu.items() if k.startswith(("model_only", "end_to_end"))}
    if "measured_peak_flops" in mfu:
        f["measured_peak_tflops"] = mfu["measured_peak_flops"] / 1e12
        f |= {f"mfu_measured_peak_{k}": v for k, v in mfu["of_measured_peak"].items()}
    # device memory: torch's own peak, and the driver's count (DALI's pools included)
    for label, r in [("model_only", j["model_only"]), *((f"end_to_end_{k}", v) for k, v in
                                                         j.get("end_to_end", {}).items())]:
        mem = r.get("gpu_memory") or {}
        f |= {f"{label}_{k}": v for k, v in mem.items() if v is not None}
    return f


def startup_figures(j: dict) -> dict:
    f = {k: j[k] for k in ("first_batch_s", "turnover_s", "median_batch_interval_s", "img_per_s", "rss_mb",
                           "samples", "rank_shards", "phases_s") if k in j}
    if j.get("turnover_s") and j.get("median_batch_interval_s"):
        f["worst_turnover_in_batches"] = max(j["turnover_s"]) / j["median_batch_interval_s"]
    return f


def hw_decoder_figures(j: dict) -> dict:
    f = {}
    for load, r in j["loads"].items():
        f |= {f"hw{load}_{stage}_img_s": v["img_per_s"] for stage, v in r["stages"].items()}
        if "jpg" in r.get("engine_peak_pct", {}):
            f[f"hw{load}_jpg_engine_peak_pct"] = r["engine_peak_pct"]["jpg"]
    return f


def figures(name: str, folder: Path, status: str) -> dict:
    """The figures of step `name` from what it left in `folder` ({} where it left nothing)."""
    j, tail = _load(folder, name), _tail(folder, name)
    f: dict = {}
    try:
        if name.startswith("preflight") and j:
            f = {k: j[k] for k in ("gpu", "driver", "torch", "dali", "webdataset", "cuda_init_s", "imports_s",
                                   "bf16_native", "missing") if j.get(k) not in (None, [])}
        elif name in ("data", "data_dali", "tiny") and j:
            f = {"reused": j["reused"], **{f"{s}_samples": v["samples"] for s, v in j["splits"].items()},
                 **{f"{s}_shards": v["shards"] for s, v in j["splits"].items()}}
        elif name.startswith(("suite_", "sweep_", "model_compile_")) and j:
            f = suite_figures(j)
            eager = _load(folder, "suite_baseline")
            if name.startswith("model_compile_") and eager:
                f["vs_eager"] = f["model_only_img_s"] / eager["model_only"]["per_s"]
        elif name == "startup" and j:
            f = startup_figures(j)
        elif name == "hw_decoder" and j:
            f = hw_decoder_figures(j)
        elif name.startswith("tests_"):
            f = {"result": next((ln.strip("= ") for ln in reversed(tail) if SUMMARY.search(ln)), "")}
        elif name in ("torchvision", "bundle") and tail:
            f = {"result": tail[-1][:300]}
    except (KeyError, TypeError, ZeroDivisionError) as e:
        f = {"figures_error": f"{type(e).__name__}: {e}"}
    if status in ("failed", "timeout") and tail:
        f["log_tail"] = tail[-1][:300]
    return {k: _rounded(v) for k, v in f.items()}


def _rounded(v):
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return {k: _rounded(x) for k, x in v.items()} if isinstance(v, dict) else v


def _cell(f: dict) -> str:
    return "; ".join(f"{k} {json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in f.items()).replace(
        "|", "/")


def table(rows: list[dict], header: str) -> str:
    """Markdown: the header line, then one row per step."""
    lines = [header, "", "| step | status | s | figures |", "|---|---|---:|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} | {_cell(r['figures'])} |" for r in rows]
    return "\n".join(lines) + "\n"
