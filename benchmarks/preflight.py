"""What the GPU check needs, checked before any step: CUDA and its start time, the driver, torch,
webdataset, a C compiler for torch.compile, and (--dali) DALI. Writes JSON; exit 1 naming what is
missing.

    python -m benchmarks.preflight --json FILE [--dali] [--dry-run]
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import sys
import time

from pipeline.atomic import atomic_write

DALI_DRIVER_MAJOR = 580  # DALI's CUDA 13 build


def version(module: str) -> tuple[str | None, str | None]:
    """(version, None) if `module` imports, else (None, why). A wheel built for another CUDA or
    Python fails with OSError or RuntimeError, not only ImportError."""
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?")), None
    except Exception as e:
        return None, f"{module} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})"


def driver_version() -> str | None:
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = smi.stdout.strip().splitlines()
    return lines[0].strip() if smi.returncode == 0 and lines else None


def check(dali: bool, dry: bool) -> dict:
    r: dict = {"missing": []}
    t0 = time.perf_counter()
    for module in ("torch", "webdataset", *(("nvidia.dali",) if dali else ())):
        r[module.rpartition(".")[2]], why = version(module)
        if why:
            r["missing"].append(why)
    r["imports_s"] = time.perf_counter() - t0
    if r["torch"] is None:
        return r
    import torch

    r["cuda_runtime"] = torch.version.cuda
    if torch.cuda.is_available():
        t0 = time.perf_counter()
        torch.zeros(1, device="cuda")  # creates the context
        torch.cuda.synchronize()
        r["cuda_init_s"] = time.perf_counter() - t0
        r["gpu"] = torch.cuda.get_device_name(0)
        r["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        r["gpu"] = None
    r["driver"] = driver_version()
    r["cc"] = next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if not dry:
        if not r["gpu"]:
            r["missing"].append("a CUDA device (torch.cuda.is_available() is False)")
        if not r["driver"]:
            r["missing"].append("nvidia-smi (the driver version)")
        elif dali and int(r["driver"].split(".")[0]) < DALI_DRIVER_MAJOR:
            r["missing"].append(f"driver >= {DALI_DRIVER_MAJOR} for DALI's CUDA 13 build (have {r['driver']})")
    if not r["cc"]:
        r["missing"].append("a C compiler (cc, gcc or clang) for torch.compile")
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--dali", action="store_true", help="DALI must import too")
    p.add_argument("--dry-run", action="store_true", help="no GPU needed (the check's CPU rehearsal)")
    args = p.parse_args(argv)
    r = check(args.dali, args.dry_run)
    atomic_write(args.json, (json.dumps(r, indent=1) + "\n").encode())
    print(json.dumps(r, indent=1))
    return 1 if r["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
