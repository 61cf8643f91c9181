"""`python -m deploy.quantize MODEL.onnx --calib-data SHARDS --out MODEL.int8.onnx`: INT8 post-training.

Static quantization (activation ranges calibrated once on real validation batches, so inference
does no range computation) with ONNX Runtime's tools (onnxruntime.quantization.quantize_static):
they run on this CPU, and they write the QDQ format (QuantizeLinear/DequantizeLinear pairs around
float ops), which ORT's CPU kernels fuse into int8 convs and which TensorRT consumes as explicit
quantization. Weights: int8 per output channel (symmetric). Activations: `--target cpu` (default)
uint8 asymmetric, ORT's recommendation for x86 (with 7-bit weights, reduce_range, where the CPU
lacks VNNI: the non-VNNI int8 dot product can saturate); `--target tensorrt` int8 symmetric, the
only form TensorRT accepts. Calibration: min/max over `--calib-batches` batches of the
validation split read through the project's own pipeline (pipeline.loader.build_loader).
Exit 2 with one line on bad input; the output is written atomically.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from deploy.data import onnx_input, val_batches
from deploy.io import DeployError, at_least_one, atomic_output, existing, require
from pipeline.cpu import cpu_flags

TARGETS = ("cpu", "tensorrt")


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has the int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI)."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def quantize_batches(model: str | Path, batches: list[np.ndarray], out: str | Path, target: str) -> None:
    """Write the QDQ INT8 model of the ONNX `model` to `out` (atomically), activation ranges
    calibrated (min/max) on `batches`: float32 NCHW arrays shaped like the model's input."""
    ortq = require("onnxruntime.quantization", "onnxruntime")
    name, _, _ = onnx_input(model)
    if not batches:
        raise DeployError(f"{model}: no calibration batches")

    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self) -> dict | None:
            images = next(self.it, None)
            return None if images is None else {name: images}

    cpu = target == "cpu"
    with atomic_output(out) as tmp, tempfile.TemporaryDirectory(dir=Path(out).parent) as work:
        # Shape inference + graph cleanup first, as ORT's quantization guide asks.
        prepared = Path(work) / "prepared.onnx"
        ortq.quant_pre_process(str(model), str(prepared))
        ortq.quantize_static(
            str(prepared), str(tmp), Reader(), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
            activation_type=ortq.QuantType.QUInt8 if cpu else ortq.QuantType.QInt8,
            weight_type=ortq.QuantType.QInt8, reduce_range=cpu and not cpu_has_vnni(),
            calibrate_method=ortq.CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": not cpu, "WeightSymmetric": True})


def quantize(model: str | Path, shards: str | Path, out: str | Path, calib_batches: int, batch_size: int,
             target: str) -> int:
    """Quantize `model` to `out`, calibrated on the first `calib_batches` validation batches of
    `shards`; return the number of calibration images. DeployError if there are none."""
    _, channels, side = onnx_input(model)
    batches = [images for images, _ in val_batches(shards, batch_size, channels, side, calib_batches)]
    quantize_batches(model, batches, out, target)
    return sum(len(b) for b in batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="float32 ONNX model (python -m deploy.export)")
    parser.add_argument("--calib-data", required=True, help="shard folder; its validation split calibrates")
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--target", choices=TARGETS, default="cpu",
                        help="cpu: uint8 activations (ORT on x86); tensorrt: symmetric int8")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        existing(args.model)
        at_least_one(calib_batches=args.calib_batches, batch_size=args.batch_size)
        n = quantize(args.model, args.calib_data, args.out, args.calib_batches, args.batch_size, args.target)
    except DeployError as e:
        print(f"quantize: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: QDQ int8 (per-channel weights, {args.target} activations), "
          f"calibrated on {n} validation images of {args.calib_data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
