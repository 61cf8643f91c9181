"""Forward cost of a model per image, counted from the layers a forward pass actually runs."""

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ForwardCost:
    """Forward-pass cost of one image. macs: multiply-accumulates; flops: 2 * macs.

    Only Conv2d and Linear are counted (bias adds included in neither); BatchNorm, ReLU,
    pooling and residual adds are ignored, as is conventional: they are <1% of a ResNet's
    arithmetic. torchvision's "GFLOPS" column for ResNets is this `macs` (4.09e9 for
    ResNet-50 at 224 px). A training step costs about 3x the forward (forward + 2x backward).
    """

    macs: int
    flops: int


def flops_per_image(model: nn.Module, image_size_px: int) -> ForwardCost:
    """Count the forward cost of `model` on one square image of side `image_size_px` pixels.

    Runs a 1-image forward with hooks on a copy moved to the meta device, so nothing is
    computed or allocated and `model` (its weights, BN statistics, device) is left untouched.
    The input channel count is taken from the first Conv2d (3 or 4 for our ResNets).
    Pass the plain module, not a torch.compile or DDP wrapper.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("flops_per_image needs a model with a Conv2d to infer input channels")
    meta_model = copy.deepcopy(model).to("meta")
    macs = []

    def count_conv(m: nn.Conv2d, inputs, out: torch.Tensor) -> None:
        # Each output element is a dot product over (in_channels / groups) * kh * kw inputs.
        kh, kw = m.kernel_size
        macs.append(out[0].numel() * (m.in_channels // m.groups) * kh * kw)

    def count_linear(m: nn.Linear, inputs, out: torch.Tensor) -> None:
        macs.append(out[0].numel() * m.in_features)

    handles = []
    for m in meta_model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(count_conv))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(count_linear))
    image = torch.empty(1, convs[0].in_channels, image_size_px, image_size_px, device="meta")
    with torch.no_grad():
        meta_model.eval()(image)
    for h in handles:
        h.remove()
    total = sum(macs)
    return ForwardCost(macs=total, flops=2 * total)
