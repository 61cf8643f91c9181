"""ResNet v1.5 with torchvision's exact module names, so its state dicts load both ways.

v1.5: a downsampling bottleneck puts its stride on the 3x3 conv (conv2), not the first 1x1;
this is what torchvision and NVIDIA's examples train (~0.5% top-1 over v1 at ~5% more MACs).
Only plain Conv2d/BatchNorm2d/ReLU/MaxPool2d/AdaptiveAvgPool2d/Linear are used, so the whole
network runs in channels_last memory format without layout conversions.

Every conv's width can be given (`widths`, in module order): a channel-pruned ResNet
(deploy/prune.py) is the same graph with narrower convs, rebuilt from that list alone.
"""

from dataclasses import dataclass

import torch
from torch import nn

from model.stages import StagedModel

STEM_WIDTH = 64  # channels out of conv1, and of layer1's blocks before expansion


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: input channels, its convs' out-channels in module order (conv1,
    conv2[, conv3][, downsample.0]), the stride, and whether it has a 1x1 projection shortcut."""

    in_planes: int
    widths: tuple[int, ...]
    stride: int
    project: bool


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Output channels = widths[1]."""

    expansion = 1
    convs = 2

    def __init__(self, spec: BlockSpec):
        super().__init__()
        w = spec.widths
        self.conv1 = nn.Conv2d(spec.in_planes, w[0], 3, stride=spec.stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(w[0], w[1], 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w[1])
        self.downsample = projection(spec)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand (ResNet-50/101/152).
    Output channels = widths[2] (4 * planes in the standard net)."""

    expansion = 4
    convs = 3

    def __init__(self, spec: BlockSpec):
        super().__init__()
        w = spec.widths
        self.conv1 = nn.Conv2d(spec.in_planes, w[0], 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.conv2 = nn.Conv2d(w[0], w[1], 3, stride=spec.stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w[1])
        self.conv3 = nn.Conv2d(w[1], w[2], 1, bias=False)
        self.bn3 = nn.BatchNorm2d(w[2])
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(spec)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def projection(spec: BlockSpec) -> nn.Sequential | None:
    """The 1x1 strided projection shortcut (created last so module order = widths order)."""
    if not spec.project:
        return None
    return nn.Sequential(nn.Conv2d(spec.in_planes, spec.widths[-1], 1, stride=spec.stride, bias=False),
                         nn.BatchNorm2d(spec.widths[-1]))


# depth -> (block type, blocks per stage), as in He et al. 2015, table 1.
ARCHITECTURES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def standard_widths(depth: int) -> list[int]:
    """Every Conv2d's out-channels of the standard resnet{depth}, in module order."""
    block, counts = ARCHITECTURES[depth]
    widths = [STEM_WIDTH]
    for i, count in enumerate(counts):
        planes = STEM_WIDTH * 2**i
        for j in range(count):
            convs = [planes] * block.convs
            convs[-1] = planes * block.expansion
            widths += convs + ([planes * block.expansion] if has_projection(block, i, j) else [])
    return widths


def has_projection(block: type, stage: int, index: int) -> bool:
    """The standard net's shortcut: a projection where the first block changes stride or width."""
    return index == 0 and (stage > 0 or block.expansion != 1)


def plan(depth: int, widths: list[int]) -> tuple[int, list[list[BlockSpec]]]:
    """(stem width, the BlockSpecs of each stage) for resnet{depth} with these conv widths
    ([] = the standard net). ValueError naming model.widths if the list does not fit: wrong
    length, a width < 1, or a residual add of two different widths."""
    standard = standard_widths(depth)
    widths = list(widths) or standard
    if len(widths) != len(standard):
        raise ValueError(f"model.widths has {len(widths)} entries; resnet{depth} has {len(standard)} convs")
    if min(widths) < 1:
        raise ValueError(f"model.widths: every width must be >= 1, got {min(widths)}")
    block, counts = ARCHITECTURES[depth]
    it = iter(widths)
    stem = in_planes = next(it)
    stages = []
    for i, count in enumerate(counts):
        stage = []
        for j in range(count):
            project = has_projection(block, i, j)
            w = tuple(next(it) for _ in range(block.convs + project))
            shortcut = w[-1] if project else in_planes
            if w[block.convs - 1] != shortcut:
                raise ValueError(f"model.widths: layer{i + 1}.{j} adds a {shortcut}-channel shortcut to "
                                 f"{w[block.convs - 1]} channels")
            stage.append(BlockSpec(in_planes, w, 2 if i > 0 and j == 0 else 1, project))
            in_planes = w[block.convs - 1]
        stages.append(stage)
    return stem, stages


class ResNet(StagedModel):
    """ResNet for (N, in_channels, H, W) float images -> (N, num_classes) logits.

    Any H, W >= 32 px works (global average pooling); ImageNet uses 224 px for training
    throughput numbers. `widths`: every conv's out-channels in module order ([] = standard).
    """

    STEM_KEY = "conv1.weight"
    HEAD_KEYS = ("fc.weight", "fc.bias")

    def __init__(self, depth: int, num_classes: int, zero_init_residual: bool, in_channels: int,
                 widths: list[int] = ()):
        super().__init__()
        block = ARCHITECTURES[depth][0]
        stem, stages = plan(depth, list(widths))
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # Names inside a stage are 0..num_blocks-1 like torchvision.
        self.layer1, self.layer2, self.layer3, self.layer4 = (nn.Sequential(*map(block, s)) for s in stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(stages[-1][-1].widths[block.convs - 1], num_classes)
        init_weights(self, zero_init_residual)

    def stages(self) -> list[list[nn.Module]]:
        """The five units freeze_stages counts: the stem (conv1, bn1), then layer1..layer4."""
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@torch.no_grad()
def init_weights(model: ResNet, zero_init_residual: bool) -> None:
    """torchvision's init: Kaiming normal (fan_out, relu) convs, BN gamma=1 beta=0, default
    Linear init. Stem input channels past the third (the zero pad channel) start at zero so a
    4-channel model computes exactly what a 3-channel one does on RGB padded with zeros."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    model.conv1.weight[:, 3:].zero_()
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_bn().weight)
