"""`python -m deploy.trt MODEL.onnx --precision fp16|int8 --out MODEL.plan [--batch-size N]`: a TensorRT engine.

Builds a serialized engine with the `tensorrt` Python API (ONNX parser, one optimization
profile for batch 1..N) and reports its img/s at batch N (warm-up, median of repeats, GPU
synchronised). fp16: the float model with FP16 kernels allowed. int8: explicit quantization,
the scales come from the model's own Q/DQ nodes (python -m deploy.quantize --target tensorrt:
symmetric int8), so no calibrator runs here. Needs `tensorrt` and a CUDA GPU; where either is
missing: one line naming it, exit 2. Bad input (no file, a model without Q/DQ nodes given to
--precision int8) is checked first: one line, exit 2, no output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from deploy.data import onnx_input
from deploy.io import DeployError, at_least_one, atomic_output, require
from pipeline.throughput import rate

PRECISIONS = ("fp16", "int8")
WORKSPACE_BYTES = 4 << 30
WARMUP, REPEATS, STEPS = 10, 5, 50


def check_qdq(path: str | Path) -> None:
    """DeployError unless the ONNX model is explicitly quantized the way TensorRT accepts it:
    QuantizeLinear/DequantizeLinear nodes with int8 (symmetric) activations."""
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not quant:
        raise DeployError(f"{path}: has no QuantizeLinear/DequantizeLinear nodes; --precision int8 needs a QDQ "
                          "model (python -m deploy.quantize MODEL.onnx --target tensorrt ...)")
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [inits.get(n.input[2]) for n in quant if len(n.input) > 2]
    if any(z is not None and z.data_type == onnx.TensorProto.UINT8 for z in zero_points):
        raise DeployError(f"{path}: quantized with uint8 activations (ONNX Runtime CPU); TensorRT takes symmetric "
                          "int8: quantize with --target tensorrt")


def require_gpu_tensorrt():
    """The tensorrt module, or DeployError naming what is missing (the package or a CUDA GPU)."""
    trt = require("tensorrt")
    if not torch.cuda.is_available():
        raise DeployError("no CUDA GPU here (TensorRT builds and runs engines on one)")
    return trt


def build_engine(path: str | Path, precision: str, batch_size: int) -> bytes:
    """The serialized engine of the ONNX model at `path` for batches 1..batch_size."""
    trt = require_gpu_tensorrt()
    name, channels, side = onnx_input(path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    weak_typing = hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11 removed the precision flags
    if not weak_typing:
        if precision == "fp16":
            raise DeployError("this TensorRT has no BuilderFlag.FP16 (11.x): convert the model to fp16 first")
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeployError(f"{path}: TensorRT cannot parse it ({errors[:300]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if weak_typing:
        config.set_flag(trt.BuilderFlag.FP16)  # int8 too: layers left in float run in fp16
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, channels, side, side), (batch_size, channels, side, side),
                      (batch_size, channels, side, side))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DeployError(f"{path}: TensorRT could not build a {precision} engine (see its log above)")
    return bytes(plan)


class Engine:
    """A deserialized engine with one input and one output, run on torch CUDA tensors."""

    def __init__(self, plan: bytes):
        trt = require_gpu_tensorrt()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        self.input = next(n for n in names if is_input(n))
        self.output = next(n for n in names if not is_input(n))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float32 contiguous CUDA images -> (N, classes) float32 logits (async)."""
        self.context.set_input_shape(self.input, tuple(images.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), device=images.device)
        self.context.set_tensor_address(self.input, images.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        return out


def engine_rate(engine: Engine, images: torch.Tensor) -> float:
    """Images/s of `engine` on one batch already on the GPU: warm-up, then median of repeats."""
    def ran() -> Iterator[torch.Tensor]:
        while True:
            engine(images)
            yield images
    return rate(ran(), len, images.device, WARMUP, STEPS, REPEATS)["per_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.trt", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ONNX model: float32 for fp16, QDQ int8 for int8")
    parser.add_argument("--precision", choices=PRECISIONS, required=True)
    parser.add_argument("--out", required=True, help="the serialized engine (.plan)")
    parser.add_argument("--batch-size", type=int, default=64, help="the largest batch; img/s is measured at it")
    args = parser.parse_args(argv)
    try:
        _, channels, side = onnx_input(args.model)  # bad input first: named even without a GPU
        if args.precision == "int8":
            check_qdq(args.model)
        at_least_one(batch_size=args.batch_size)
        plan = build_engine(args.model, args.precision, args.batch_size)
        with atomic_output(args.out) as tmp:
            tmp.write_bytes(plan)
        images = torch.from_numpy(np.random.default_rng(0).standard_normal(
            (args.batch_size, channels, side, side), dtype=np.float32)).cuda()
        img_per_s = engine_rate(Engine(plan), images)
    except DeployError as e:
        print(f"trt: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: TensorRT {args.precision} engine, batch 1..{args.batch_size}, "
          f"{img_per_s:.0f} img/s at batch {args.batch_size} ({torch.cuda.get_device_name()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
