"""ResNet v1.5 with torchvision's exact module names, so its state dicts load both ways.

v1.5: a downsampling bottleneck puts its stride on the 3x3 conv (conv2), not the first 1x1;
this is what torchvision and NVIDIA's examples train (~0.5% top-1 over v1 at ~5% more MACs).
Only plain Conv2d/BatchNorm2d/ReLU/MaxPool2d/AdaptiveAvgPool2d/Linear are used, so the whole
network runs in channels_last memory format without layout conversions.
"""

import torch
from torch import nn

STEM_WIDTH = 64  # channels out of conv1, and of layer1's blocks before expansion


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Output channels = planes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand (ResNet-50/101/152).
    Output channels = 4 * planes."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# depth -> (block type, blocks per stage), as in He et al. 2015, table 1.
ARCHITECTURES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet for (N, in_channels, H, W) float images -> (N, num_classes) logits.

    Any H, W >= 32 px works (global average pooling); ImageNet uses 224 px for training
    throughput numbers. `frozen_stages` (set by model.finetune.freeze_stages, default 0) names
    how many leading stages keep their BatchNorm layers in eval mode through `train()`.
    """

    def __init__(self, depth: int, num_classes: int, zero_init_residual: bool, in_channels: int):
        super().__init__()
        block, blocks_per_stage = ARCHITECTURES[depth]
        self.frozen_stages = 0
        self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = STEM_WIDTH
        stages = []
        for i, num_blocks in enumerate(blocks_per_stage):
            planes = STEM_WIDTH * 2**i
            stages.append(make_stage(block, in_planes, planes, num_blocks, stride=1 if i == 0 else 2))
            in_planes = planes * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self, zero_init_residual)

    def stages(self) -> list[list[nn.Module]]:
        """The five units freeze_stages counts: the stem (conv1, bn1), then layer1..layer4."""
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        # Frozen stages keep their running statistics: re-assert eval after every train().
        for stage in self.stages()[: self.frozen_stages]:
            for module in stage:
                for m in module.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make_stage(block, in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    """One stage: the first block changes stride/width (with a 1x1 projection shortcut when
    the shape changes), the rest keep it. Names inside are 0..num_blocks-1 like torchvision."""
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = nn.Sequential(
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_planes),
        )
    blocks = [block(in_planes, planes, stride, downsample)]
    blocks += [block(out_planes, planes, 1, None) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


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
