"""`python -m deploy.prune CKPT --flops-ratio R --out PRUNED.pt`: structured channel pruning.

Removes whole output channels of a ResNet's convs (and the matching BN channels and input
channels of the next layers) until the forward FLOPs (model/flops.py, at the checkpoint's val
image size) are at most R times the original's. Pruning uses Torch-Pruning's dependency graph
(DepGraph, Fang et al. 2023): channels joined by a residual add (every block's last conv, the
projection shortcut and the next blocks' inputs of a stage; for ResNet-18/34 also the stem) form
one group and are removed together, so the adds stay consistent. The classifier keeps its classes.

Importance criterion: BN scale (tp.importance.BNScaleImportance; |gamma| of each channel's
BatchNorm, summed over a coupled group: Network Slimming, Liu et al. 2017). It is data-free, and
with BN after every conv a channel whose gamma is near zero contributes nearly nothing. Every
layer loses the same share of channels per step (no global ranking, which can empty a layer),
rounded to multiples of 8 (vector and tensor-core friendly); steps of 2% until the FLOPs target.

The output holds the architecture as data: the checkpoint's config with `model.widths` (each
conv's out-channels in module order) and the pruned state dict; it loads with weights_only=True,
fine-tunes with `python -m train ... train.finetune.weights=PRUNED.pt` and exports with
`python -m deploy.export PRUNED.pt OUT.onnx`. Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from torch import nn

from deploy.io import DeployError, atomic_output, require
from deploy.model_file import PRUNED_KIND, WEIGHTS, build_from_file, load_model_file
from model import MODEL_DEPTHS, ModelConfig, build_model, conv_widths, flops_per_image
from train.config import to_dict

STEPS = 50  # pruning steps of 1/STEPS x MAX_RATIO of each layer's channels (~2%)
MAX_RATIO = 0.95  # the most of a layer's channels that may go
ROUND_TO = 8


def params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def prune_to_flops(net: nn.Module, flops_ratio: float, size_px: int) -> nn.Module:
    """Prune `net` (a ResNet, eval mode) in place until its forward FLOPs at `size_px` are
    <= flops_ratio x the original's; return it. DeployError if the ratio cannot be reached."""
    tp = require("torch_pruning", "torch-pruning")
    target = flops_ratio * flops_per_image(net, size_px).flops
    example = torch.randn(1, net.conv1.in_channels, size_px, size_px)
    pruner = tp.pruner.BasePruner(net, example, importance=tp.importance.BNScaleImportance(),
                                  pruning_ratio=MAX_RATIO, iterative_steps=STEPS, ignored_layers=[net.fc],
                                  round_to=ROUND_TO)
    while flops_per_image(net, size_px).flops > target:
        if pruner.current_step >= STEPS:
            raise DeployError(f"--flops-ratio {flops_ratio}: cannot be reached keeping "
                              f"{1 - MAX_RATIO:.0%} of each layer")
        pruner.step()
    return net


def pruned_config(cfg_model: ModelConfig, net: nn.Module) -> ModelConfig:
    """The ModelConfig that rebuilds `net`: the same network with its convs' current widths."""
    return dataclasses.replace(cfg_model, widths=conv_widths(net))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.prune", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a trainer checkpoint (ResNet)")
    parser.add_argument("--flops-ratio", type=float, required=True, help="target FLOPs / original, in (0, 1)")
    parser.add_argument("--out", required=True, help="the pruned model file (.pt)")
    parser.add_argument("--weights", choices=WEIGHTS, default=None,
                        help="default: the checkpoint's selected_weights (what best.pt was chosen by)")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.flops_ratio < 1:
            raise DeployError(f"--flops-ratio {args.flops_ratio}: must be in (0, 1)")
        require("torch_pruning", "torch-pruning")
        state = load_model_file(args.checkpoint)
        net, cfg, which = build_from_file(state, args.checkpoint, args.weights)
        if cfg.model.name not in MODEL_DEPTHS:
            raise DeployError(f"{args.checkpoint}: holds {cfg.model.name}; deploy.prune prunes ResNets "
                              f"({', '.join(MODEL_DEPTHS)})")
        size = cfg.data.val_image_size
        before, params_before = flops_per_image(net, size).flops, params(net)
        prune_to_flops(net, args.flops_ratio, size)
        model_cfg = pruned_config(cfg.model, net)
        rebuilt = build_model(model_cfg)
        rebuilt.load_state_dict(net.state_dict())  # strict: the file rebuilds exactly this network
        after, params_after = flops_per_image(rebuilt, size).flops, params(rebuilt)
        record = {
            "kind": PRUNED_KIND, "model": rebuilt.state_dict(), "selected_weights": "model",
            "config": to_dict(dataclasses.replace(cfg, model=model_cfg)),
            "pruning": {"source": str(args.checkpoint), "source_weights": which, "criterion": "bn_scale",
                        "flops_ratio_target": args.flops_ratio, "image_size": size, "flops_before": before,
                        "flops_after": after, "params_before": params_before, "params_after": params_after},
        }
        with atomic_output(args.out) as tmp:
            torch.save(record, tmp)
    except DeployError as e:
        print(f"prune: {e}", file=sys.stderr)
        return 2
    print(f"pruned {cfg.model.name} ({which!r} weights of {args.checkpoint}) at {size} px:\n"
          f"  FLOPs  {before / 1e9:.4f} -> {after / 1e9:.4f} GFLOP/img ({after / before:.3f}x)\n"
          f"  params {params_before / 1e6:.3f} -> {params_after / 1e6:.3f} M ({params_after / params_before:.3f}x)\n"
          f"wrote {args.out}; fine-tune it with train.finetune.weights={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
