"""The networks (ResNet v1.5, MobileNetV3) built from a ModelConfig, plus cost and fine-tuning helpers."""

from torch import nn

from model.config import MOBILENETS, MODEL_DEPTHS, MODEL_NAMES, ModelConfig
from model.finetune import freeze_stages, load_torchvision_state_dict
from model.flops import ForwardCost, flops_per_image
from model.mobilenet import MobileNetV3
from model.resnet import ResNet
from model.stages import StagedModel
from model.stored import stored_model_config


def build_model(model_cfg: ModelConfig) -> StagedModel:
    """Build a freshly initialised network on the CPU in float32 (contiguous format).

    The caller moves it to its device and memory format, e.g.
    `model.to(device, memory_format=torch.channels_last)`. Build inside
    `with torch.device("meta"):` to get shapes without allocating weights.
    """
    if model_cfg.name in MOBILENETS:
        model = MobileNetV3(model_cfg.name, model_cfg.num_classes, model_cfg.in_channels)
    else:
        model = ResNet(depth=MODEL_DEPTHS[model_cfg.name], num_classes=model_cfg.num_classes,
                       zero_init_residual=model_cfg.zero_init_residual, in_channels=model_cfg.in_channels,
                       widths=model_cfg.widths)
    if model_cfg.bn_momentum:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = model_cfg.bn_momentum
    return model


def conv_widths(model: StagedModel) -> list[int]:
    """Every Conv2d's out-channels in module order: a pruned model's `ModelConfig.widths`."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


__all__ = [
    "MODEL_NAMES",
    "ForwardCost",
    "MobileNetV3",
    "ModelConfig",
    "ResNet",
    "StagedModel",
    "build_model",
    "conv_widths",
    "flops_per_image",
    "freeze_stages",
    "load_torchvision_state_dict",
    "stored_model_config",
]
