"""Our ResNet-50 state dict loads into torchvision's resnet50 (strict) and gives the same logits.

    python -m benchmarks.torchvision_check [--device cpu|gpu]
Exit 0 on a match, 1 on a mismatch, and NOT_CHECKED (3) with "NOT CHECKED (torchvision not
importable: REASON)" where torchvision is missing or fails to import: a torchvision built for
another torch raises RuntimeError or OSError at import, not only ImportError. Never "OK" unchecked.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.gpu_plan import NOT_CHECKED  # exit code: torchvision could not be imported
from benchmarks.timing import resolve_device
from model import ModelConfig, build_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    args = p.parse_args(argv)
    try:
        import torchvision
    except Exception as e:  # ImportError, or RuntimeError/OSError from a build for another torch
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        print(f"torchvision check: NOT CHECKED (torchvision not importable: {reason})")
        return NOT_CHECKED
    device = resolve_device(args.device)
    torch.manual_seed(0)
    ours = build_model(ModelConfig(name="resnet50", zero_init_residual=False)).to(device).eval()
    theirs = torchvision.models.resnet50().to(device).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(4, 3, 224, 224, device=device)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    ok = diff <= 1e-4
    print(f"torchvision check: state dict loads strictly into torchvision {torchvision.__version__} resnet50; "
          f"max |logit difference| = {diff:.2e} -> {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
