"""Typed model config: which network, how many classes, stem width, init choice, conv widths."""

from dataclasses import dataclass, field

from model.resnet import plan

# Depth of each supported ResNet; the name is what a recipe YAML writes.
MODEL_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
MOBILENETS = ("mobilenet_v3_large", "mobilenet_v3_small")
MODEL_NAMES = (*MODEL_DEPTHS, *MOBILENETS)
IN_CHANNELS = (3, 4)


@dataclass
class ModelConfig:
    """The network the trainer builds.

    name: one of MODEL_NAMES (resnet18/34/50/101/152, mobilenet_v3_large/small).
    num_classes: width of the classifier head (1000 for ImageNet-1k).
    zero_init_residual: start each residual block's last BN gamma at 0, so every block begins
        as the identity (Goyal et al. 2017); helps large-batch training. ResNets only.
    in_channels: 3 for RGB, or 4 when the input pipeline pads RGB with a zero fourth channel
        (channels-last convs are faster with 4 input channels on tensor cores).
    widths: every Conv2d's out-channels in module order; [] = the standard network. Written by
        `python -m deploy.prune` so a channel-pruned ResNet is rebuilt from data. ResNets only.
    bn_momentum: BatchNorm's running-statistics momentum; 0 = the architecture's own (0.1 for
        ResNets; 0.01 for MobileNetV3, as torchvision: its statistics lag a short run's weights).
    """

    name: str = "resnet50"
    num_classes: int = 1000
    zero_init_residual: bool = True
    in_channels: int = 3
    widths: list[int] = field(default_factory=list)
    bn_momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model.name={self.name!r} is not supported; choose one of {list(MODEL_NAMES)}")
        if self.in_channels not in IN_CHANNELS:
            raise ValueError(f"model.in_channels={self.in_channels!r} must be one of {IN_CHANNELS}")
        if self.num_classes < 1:
            raise ValueError(f"model.num_classes={self.num_classes!r} must be >= 1")
        if not 0 <= self.bn_momentum <= 1:
            raise ValueError(f"model.bn_momentum={self.bn_momentum!r} must be in [0, 1] (0: the architecture's own)")
        if self.widths:
            if self.name not in MODEL_DEPTHS:
                raise ValueError(f"model.widths is for ResNets (pruned by deploy.prune), not {self.name}")
            plan(MODEL_DEPTHS[self.name], self.widths)  # ValueError naming model.widths
