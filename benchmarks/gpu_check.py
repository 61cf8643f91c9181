"""The GPU check: every GPU figure, in tiers that each fit one command of a short GPU visit.

    python -m benchmarks.gpu_check --tier 1|2 --out DIR [--dry-run] [--only STEP,...] [--deadline S]

Each step (benchmarks/gpu_plan.py) runs as its own process under its own timeout, cut to what is
left of the deadline (default: the tier's budget). As each step ends, its row (name, status
ok|failed|timeout|skipped, seconds, figures) is appended to DIR/results.jsonl, DIR/table.md is
rewritten and DIR/tierN.tar.gz re-packed with every log and JSON so far: a command killed at any
moment still brings back what was measured. The table is printed last. `--dry-run` runs the same
plan at toy size on the CPU, tier 1 with `nvidia.dali` blocked (it must need no DALI). Exit 1 if
a step failed or timed out, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.gpu_figures import figures, table
from benchmarks.gpu_plan import DRY_SCALE, NOT_CHECKED, TIER_BUDGET_S, Context, Step, plan, sizes
from pipeline.atomic import atomic_write
from tools.gpu_bundle import DEFAULT_STORE, MANIFEST, MARKER

ROOT = Path(__file__).resolve().parent.parent
KILL_GRACE_S = 5
BLOCK_DALI = """import sys
class BlockDali:
    def find_spec(self, name, path=None, target=None):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            raise ImportError(f"{name} is blocked: tier 1 of the GPU check runs without DALI")
sys.meta_path.insert(0, BlockDali())
"""


class Stopped(Exception):
    """SIGTERM or SIGINT: the command running the check is being stopped."""


def _stop(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def skip_reason(step: Step, have: dict, c: Context) -> str:
    """Why `step` cannot run now ('' when it can)."""
    if c.dry and step.dry_note:
        return step.dry_note
    checks = {"cuda": (c.dry or have.get("cuda"), "no CUDA device (preflight)"),
              "dali": (have.get("dali"), "nvidia.dali does not import (preflight)"),
              "torch": (have.get("torch", True), "torch does not import (preflight)"),
              "cc": (have.get("cc"), "no C compiler for torch.compile (preflight)"),
              "data": ((c.shards / "_info.json").exists(), "no shards (the data step did not finish)"),
              "tiny": ((c.tiny / "_info.json").exists(), "no tiny shards (the tiny step did not finish)")}
    for need in step.needs:
        ok, why = checks[need]
        if not ok:
            return why
    if step.name == "bundle" and c.dry:
        return "dry run: DALI comes from this environment"
    if step.name == "bundle" and not (DEFAULT_STORE / MANIFEST).exists():
        return f"no bundle parts in {DEFAULT_STORE} (tools/gpu_bundle.py receive)"
    return ""


def learn(step: Step, c: Context, have: dict) -> None:
    """What a finished preflight tells the later steps: what imports, whether there is a GPU."""
    if step.name.startswith("preflight"):
        try:
            r = json.loads((c.out / f"{step.name}.json").read_text())
        except (OSError, ValueError):
            return
        have.update(torch=bool(r.get("torch")), cuda=bool(r.get("gpu")), cc=bool(r.get("cc")),
                    dali=bool(r.get("dali")))


def run_step(argv: list[str], log: Path, timeout_s: float, env: dict) -> tuple[str, float]:
    """Run one step's process (its own session, so a timeout kills its children too): (status, s).
    Status: ok (exit 0), skipped (exit NOT_CHECKED), failed (any other exit) or timeout."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 0.1))
            status = {0: "ok", NOT_CHECKED: "skipped"}.get(rc, "failed")
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:  # a timeout, or Stopped: the step's whole process group goes with it
            if proc.poll() is None:
                _kill(proc)
    return status, time.perf_counter() - t0


def _kill(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class Report:
    """results.jsonl, table.md and the archive in DIR, rewritten as each row arrives."""

    def __init__(self, out: Path, staging: Path, tier: int, header: str):
        self.out, self.staging, self.tier, self.header = out, staging, tier, header
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self.flush()

    def flush(self) -> None:
        atomic_write(self.out / "table.md", table(self.rows, self.header).encode())
        tmp = self.out / f".tier{self.tier}.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.staging, arcname=f"tier{self.tier}")
        os.replace(tmp, self.out / f"tier{self.tier}.tar.gz")


def environment(c: Context, tier: int) -> dict:
    """The steps' environment: the checkout (and the installed bundle) on PYTHONPATH; in a tier-1
    dry run, a sitecustomize that makes `import nvidia.dali` fail."""
    paths = [str(ROOT)]
    if (c.bundle_site / MARKER).exists():
        paths.append(str(c.bundle_site))
    if c.dry and tier == 1:
        block = c.work / "block-dali"
        block.mkdir(parents=True, exist_ok=True)
        (block / "sitecustomize.py").write_text(BLOCK_DALI)
        paths.insert(0, str(block))
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tier", type=int, choices=sorted(TIER_BUDGET_S), required=True)
    p.add_argument("--out", type=Path, required=True, help="results: table.md, results.jsonl, tierN.tar.gz")
    p.add_argument("--dry-run", action="store_true", help="the same plan at toy size on the CPU")
    p.add_argument("--only", help="comma list of steps (with the set-up steps they need)")
    p.add_argument("--deadline", type=float, help="seconds for the whole tier (default: its budget)")
    p.add_argument("--work", type=Path, default=Path("/tmp/firehose-gpu-check"),
                   help="kept between tiers: shards, the DALI bundle")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    cores = os.cpu_count() or 1
    try:
        steps = plan(args.tier, args.dry_run, cores, set(args.only.split(",")) if args.only else None)
    except ValueError as e:
        print(f"error: --only: {e}", file=sys.stderr)
        return 2
    scale = DRY_SCALE if args.dry_run else 1
    deadline_s = args.deadline if args.deadline is not None else scale * TIER_BUDGET_S[args.tier]
    staging = args.work / f"tier{args.tier}"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
        for step in steps:  # this run's steps start afresh; an --only rerun keeps the others' files
            for old in staging.glob(f"{step.name}.*"):
                old.unlink()
        (args.out / "results.jsonl").write_text("")
    except OSError as e:
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    c = Context(sys.executable, ROOT, args.work, staging, sizes(args.dry_run, cores), args.dry_run)
    budget = ", ".join(f"{s.name} {s.budget_s}" for s in steps)
    header = (f"GPU check tier {args.tier} ({'dry run, CPU' if args.dry_run else 'GPU'}), {cores} cores, "
              f"deadline {deadline_s:.0f} s; GPU budget {sum(s.budget_s for s in steps)} s: {budget}")
    print(header, flush=True)
    report = Report(args.out, staging, args.tier, header)
    have: dict = {}
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    current, step_start = None, 0.0
    try:
        for step in steps:
            left = deadline_s - (time.monotonic() - start)
            why = skip_reason(step, have, c) or ("" if left >= 5 else f"no time left of the {deadline_s:.0f} s")
            if why:
                print(f"== {step.name}: skipped ({why})", flush=True)
                report.add({"name": step.name, "status": "skipped", "seconds": 0.0, "figures": {"note": why}})
                continue
            timeout_s = min(scale * step.budget_s, left)
            argv = step.command(c)
            print(f"== {step.name} (timeout {timeout_s:.0f} s): {' '.join(argv)}", flush=True)
            current, step_start = step.name, time.monotonic()
            status, seconds = run_step(argv, staging / f"{step.name}.log", timeout_s, environment(c, args.tier))
            current = None
            learn(step, c, have)
            row = {"name": step.name, "status": status, "seconds": round(seconds, 1),
                   "figures": figures(step.name, staging, status)}
            print(f"   {status} ({seconds:.0f} s) {json.dumps(row['figures'])[:600]}", flush=True)
            report.add(row)
    except Stopped as e:
        if current:
            report.add({"name": current, "status": "timeout", "seconds": round(time.monotonic() - step_start, 1),
                        "figures": {"note": f"the whole check was stopped ({e}) during this step"}})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        report.flush()
    print()
    print((args.out / "table.md").read_text(), end="", flush=True)
    return 1 if any(r["status"] in ("failed", "timeout") for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
