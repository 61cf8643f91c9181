"""Typed model config: which ResNet, how many classes, stem width, init choice."""

from dataclasses import dataclass

# Depth of each supported architecture; the name is what a recipe YAML writes.
MODEL_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
IN_CHANNELS = (3, 4)


@dataclass
class ModelConfig:
    """The network the trainer builds.

    name: one of MODEL_DEPTHS (resnet18/34/50/101/152).
    num_classes: width of the classifier head (1000 for ImageNet-1k).
    zero_init_residual: start each residual block's last BN gamma at 0, so every block begins
        as the identity (Goyal et al. 2017); helps large-batch training.
    in_channels: 3 for RGB, or 4 when the input pipeline pads RGB with a zero fourth channel
        (channels-last convs are faster with 4 input channels on tensor cores).
    """

    name: str = "resnet50"
    num_classes: int = 1000
    zero_init_residual: bool = True
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.name not in MODEL_DEPTHS:
            raise ValueError(
                f"model.name={self.name!r} is not supported; choose one of {list(MODEL_DEPTHS)}"
            )
        if self.in_channels not in IN_CHANNELS:
            raise ValueError(f"model.in_channels={self.in_channels!r} must be one of {IN_CHANNELS}")
        if self.num_classes < 1:
            raise ValueError(f"model.num_classes={self.num_classes!r} must be >= 1")
