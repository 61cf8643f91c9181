"""`profile: true`: a torch.profiler trace of a few steps after warm-up, plus NVTX ranges.

The trace (RUN_DIR/profile/trace-rank{R}.json) opens in chrome://tracing or Perfetto; a table
of the top operators is printed. NVTX ranges ("data", "forward", "backward") show up in
Nsight Systems (`nsys profile -t cuda,nvtx python -m train ... profile=true`). With
profile false every hook is a no-op.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

WAIT, WARMUP, ACTIVE = 10, 3, 5  # steps: skip start-up, warm the profiler, then record


class Profiler:
    def __init__(self, enabled: bool, run_dir: str | Path, device: torch.device, rank: int):
        self.enabled, self.device = enabled, device
        self.nvtx = enabled and device.type == "cuda"
        self.prof = None
        if not enabled:
            return
        out = Path(run_dir) / "profile"
        out.mkdir(parents=True, exist_ok=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)

        def ready(p: torch.profiler.profile) -> None:
            p.export_chrome_trace(str(out / f"trace-rank{rank}.json"))
            if rank == 0:
                key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
                print(p.key_averages().table(sort_by=key, row_limit=15), flush=True)

        self.prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1),
            on_trace_ready=ready, record_shapes=True)
        self.prof.start()

    def step(self) -> None:
        """Call once per training step."""
        if self.prof is not None:
            self.prof.step()

    def range(self, name: str) -> contextlib.AbstractContextManager:
        """An NVTX range on CUDA when profiling, else nothing."""
        return torch.cuda.nvtx.range(name) if self.nvtx else contextlib.nullcontext()

    def close(self) -> None:
        if self.prof is not None:
            self.prof.stop()
            self.prof = None
