"""MobileNetV3 (Howard et al. 2019) with torchvision's exact module names and parameter counts.

The small, fast student for distillation and deployment: 5,483,032 parameters (large) and
2,542,856 (small) with 1000 classes, as torchvision.models.mobilenet_v3_large/small, whose
state dicts load here unchanged. Depthwise convs (groups = channels), Hardswish, and
squeeze-and-excitation with a Hardsigmoid gate; all ops run in channels_last and under autocast.
"""

from dataclasses import dataclass

import torch
from torch import nn

from model.stages import StagedModel

BN_EPS, BN_MOMENTUM = 0.001, 0.01  # torchvision's (TF-style) BatchNorm settings for MobileNetV3
DROPOUT = 0.2  # before the last Linear


@dataclass(frozen=True)
class Bneck:
    """One inverted-residual block of the paper's tables 1 and 2: input, kernel, expanded and
    output channels, squeeze-and-excitation, Hardswish (else ReLU), stride."""

    inp: int
    kernel: int
    expanded: int
    out: int
    se: bool
    hs: bool
    stride: int


def table(rows: list[tuple]) -> list[Bneck]:
    return [Bneck(*r) for r in rows]


# (in, kernel, expanded, out, SE, hardswish, stride); last_channel = the classifier's hidden width.
SETTINGS: dict[str, tuple[list[Bneck], int]] = {
    "mobilenet_v3_large": (table([
        (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
        (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
        (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
        (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
        (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1),
    ]), 1280),
    "mobilenet_v3_small": (table([
        (16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
        (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
        (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
        (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1),
    ]), 1024),
}


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never below 90% of v (torchvision's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BN -> optional activation; keys 0.weight, 1.* like torchvision's
    Conv2dNormActivation."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU):
        layers = [nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(out, eps=BN_EPS, momentum=BN_MOMENTUM)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate: global mean -> 1x1 reduce -> ReLU -> 1x1 expand -> Hardsigmoid -> scale."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when expanded == in), kxk depthwise (carries the stride), optional SE,
    1x1 linear projection; identity shortcut when stride 1 and in == out."""

    def __init__(self, c: Bneck):
        super().__init__()
        act = nn.Hardswish if c.hs else nn.ReLU
        self.use_res_connect = c.stride == 1 and c.inp == c.out
        layers: list[nn.Module] = []
        if c.expanded != c.inp:
            layers.append(ConvBNAct(c.inp, c.expanded, 1, act=act))
        layers.append(ConvBNAct(c.expanded, c.expanded, c.kernel, c.stride, groups=c.expanded, act=act))
        if c.se:
            layers.append(SqueezeExcitation(c.expanded, make_divisible(c.expanded // 4)))
        layers.append(ConvBNAct(c.expanded, c.out, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(StagedModel):
    """MobileNetV3 for (N, in_channels, H, W) float images -> (N, num_classes) logits.

    features.0 is the stem conv (3x3, stride 2, Hardswish), features.1..n the blocks, the last
    feature a 1x1 conv to 6x the last block's width; the classifier is Linear -> Hardswish ->
    Dropout -> Linear. Any H, W >= 32 px works.
    """

    STEM_KEY = "features.0.0.weight"
    HEAD_KEYS = ("classifier.3.weight", "classifier.3.bias")

    def __init__(self, name: str, num_classes: int, in_channels: int):
        super().__init__()
        blocks, last_channel = SETTINGS[name]
        last_conv = 6 * blocks[-1].out
        self.features = nn.Sequential(
            ConvBNAct(in_channels, blocks[0].inp, 3, stride=2, act=nn.Hardswish),
            *(InvertedResidual(c) for c in blocks),
            ConvBNAct(blocks[-1].out, last_conv, 1, act=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_conv, last_channel), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=DROPOUT, inplace=True), nn.Linear(last_channel, num_classes))
        # Stage boundaries for freeze_stages: features grouped by output stride 2, 4, 8, 16, 32.
        strides = [2]  # the stem
        for c in blocks:
            strides.append(strides[-1] * c.stride)
        strides.append(strides[-1])  # the last 1x1 conv
        self._stage_ends = [strides.index(s) for s in (4, 8, 16, 32)]
        init_weights(self)

    def stages(self) -> list[list[nn.Module]]:
        """Five units for freeze_stages: the features at output stride 2 (the stem), 4, 8, 16 and
        32 (with the last 1x1 conv); the classifier always trains."""
        bounds = [0, *self._stage_ends, len(self.features)]
        return [list(self.features[a:b]) for a, b in zip(bounds, bounds[1:])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@torch.no_grad()
def init_weights(model: MobileNetV3) -> None:
    """torchvision's init: Kaiming normal (fan_out) convs with zero bias, BN gamma=1 beta=0,
    Linear N(0, 0.01) with zero bias. Stem input channels past the third start at zero (the
    4-channel stem computes what the 3-channel one does on zero-padded RGB)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    model.features[0][0].weight[:, 3:].zero_()
