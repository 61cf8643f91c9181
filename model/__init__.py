"""The network: ResNet v1.5 built from a ModelConfig, plus cost and fine-tuning helpers."""

from model.config import MODEL_DEPTHS, ModelConfig
from model.finetune import freeze_stages, load_torchvision_state_dict
from model.flops import ForwardCost, flops_per_image
from model.resnet import ResNet


def build_model(model_cfg: ModelConfig) -> ResNet:
    """Build a freshly initialised ResNet on the CPU in float32 (contiguous format).

    The caller moves it to its device and memory format, e.g.
    `model.to(device, memory_format=torch.channels_last)`. Build inside
    `with torch.device("meta"):` to get shapes without allocating weights.
    """
    return ResNet(
        depth=MODEL_DEPTHS[model_cfg.name],
        num_classes=model_cfg.num_classes,
        zero_init_residual=model_cfg.zero_init_residual,
        in_channels=model_cfg.in_channels,
    )


__all__ = [
    "ForwardCost",
    "ModelConfig",
    "ResNet",
    "build_model",
    "flops_per_image",
    "freeze_stages",
    "load_torchvision_state_dict",
]
