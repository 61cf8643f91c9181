"""`python -m deploy.export CKPT OUT.onnx [--weights model|ema] [--image-size PX]`: a model to ONNX.

CKPT is a trainer checkpoint (ResNet or MobileNet, pruned or not) or a pruned file from
deploy.prune. The exported weights are the ones the checkpoint's best score came from (its
"selected_weights", "model" when absent) unless --weights says otherwise; the command says which.
Uses torch.onnx.export's TorchScript-based exporter (dynamo=False), which needs only the `onnx`
package. The batch dimension is dynamic; the input is float32 NCHW normalized like the loader.
Exit codes: 0 written, 2 unusable checkpoint or a missing package (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from deploy.io import DeployError, atomic_output, require
from deploy.model_file import WEIGHTS, build_from_file, load_model_file

INPUT, OUTPUT = "images", "logits"  # tensor names every deploy tool expects


def export_onnx(net: nn.Module, out: str | Path, channels: int, size_px: int, opset: int = 17) -> None:
    """Write `net` (eval mode, CPU) as ONNX to `out` atomically: input "images" (batch, channels,
    size_px, size_px) float32 with a dynamic batch, output "logits" (batch, classes)."""
    require("onnx")
    example = torch.randn(1, channels, size_px, size_px)
    with atomic_output(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose
        torch.onnx.export(net, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--weights", choices=WEIGHTS, default=None,
                        help="default: the checkpoint's selected_weights (what best.pt was chosen by)")
    parser.add_argument("--image-size", type=int, default=None, help="px; default: the val image size")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    try:
        require("onnx")
        state = load_model_file(args.checkpoint)
        net, cfg, which = build_from_file(state, args.checkpoint, args.weights)
        size = args.image_size or cfg.data.val_image_size
        export_onnx(net, args.out, cfg.model.in_channels, size, args.opset)
    except DeployError as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    pruned = " (pruned)" if cfg.model.widths else ""
    print(f"wrote {args.out}: {cfg.model.name}{pruned}, the {which!r} weights, "
          f"{cfg.model.in_channels} x {size} x {size} input, opset {args.opset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
