"""`python -m train.export CKPT out.onnx [--image-size PX] [--ema]`: a checkpoint's model to ONNX.

Uses torch.onnx.export's TorchScript-based exporter (dynamo=False), which needs only the `onnx`
package. The batch dimension is dynamic; the input is float32 NCHW normalized like the loader.
Exit codes: 0 written, 2 unusable checkpoint or a missing package (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings

import torch

from model import build_model
from train.checkpoint import CheckpointError, load_checkpoint
from train.config import ConfigError, from_dict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--image-size", type=int, default=None, help="px; default: the val image size")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    for package in ("onnx",):
        if importlib.util.find_spec(package) is None:
            print(f"export: the '{package}' package is not installed (pip install {package})", file=sys.stderr)
            return 2
    try:
        state = load_checkpoint(args.checkpoint)
        cfg = from_dict(state["config"])
    except (CheckpointError, ConfigError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    if args.ema and not state.get("ema"):
        print(f"export: {args.checkpoint} has no EMA weights", file=sys.stderr)
        return 2
    model = build_model(cfg.model)
    model.load_state_dict(state["ema"] if args.ema else state["model"])
    model.eval()
    size = args.image_size or cfg.data.val_image_size
    channels = 4 if cfg.data.pad_channels else 3
    example = torch.randn(1, channels, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose
        torch.onnx.export(model, (example,), args.out, dynamo=False, opset_version=args.opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    print(f"wrote {args.out}: {cfg.model.name}, {channels} x {size} x {size} input, opset {args.opset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
