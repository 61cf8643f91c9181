"""Proof that the hardware JPEG decoder does the work: DALI's decode and train stages with
`hw_decoder_load` 0 (nvJPEG on the SMs and CPU threads only) against 0.65 (the default), with
the JPEG engines' utilisation that `nvidia-smi dmon` reports while each runs (its `jpg` column,
where the driver has one).

    python -m benchmarks.hw_decoder --data OUT [--loads 0,0.65] [--device gpu] [suite data flags] --json FILE
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading

from benchmarks.common import add_data_args, num_classes, one_line_errors, one_thread_count, write_json
from benchmarks.pipeline_bench import measure
from benchmarks.timing import resolve_device


class EngineWatch:
    """`nvidia-smi dmon -s u` in the background: the samples of each utilisation column (%)."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}
        self._proc = None

    def __enter__(self):
        try:
            self._proc = subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", "-d", "1"], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self):
        columns: list[str] = []
        for line in self._proc.stdout:
            fields = line.split()
            if line.startswith("#") and "gpu" in fields:
                columns = fields[1:]
            elif columns and len(fields) == len(columns):
                for name, value in zip(columns[1:], fields[1:]):
                    if value.replace(".", "", 1).isdigit():
                        self.samples.setdefault(name, []).append(float(value))

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._reader.join(timeout=10)

    def peaks(self) -> dict[str, float]:
        """The highest sample of each column (% utilisation); {} where dmon did not run."""
        return {name: max(v) for name, v in self.samples.items() if v}


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p, batch_size=256)
    p.add_argument("--loads", default="0,0.65", help="hw_decoder_load values to compare")
    p.add_argument("--stages", default="decode,train")
    p.add_argument("--split", default="train")
    args = p.parse_args(argv)
    threads = one_thread_count(args, p)
    device = resolve_device(args.device)
    classes = num_classes(args)
    result = {"args": vars(args), "loads": {}}
    for load in (float(x) for x in args.loads.split(",")):
        with EngineWatch() as watch:
            stages = measure("dali", argparse.Namespace(**{**vars(args), "hw_decoder_load": load}), device, classes,
                             threads)
        result["loads"][f"{load:g}"] = {"stages": stages, "engine_peak_pct": watch.peaks()}
        print(f"hw_decoder_load {load:g}: " + ", ".join(f"{s} {v['img_per_s']:.0f} img/s" for s, v in stages.items())
              + f"; nvidia-smi peaks {watch.peaks() or 'n/a'}", flush=True)
    write_json(args.json, result, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
