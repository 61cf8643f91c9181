"""The base of every network here: named stages that fine-tuning can freeze, BN kept frozen."""

import torch
from torch import nn


class StagedModel(nn.Module):
    """A network whose leading stages model.finetune.freeze_stages can freeze.

    Subclasses define `stages()`: five units, from the stem to the last stage (the classifier
    head is never one). `STEM_KEY` names the first conv's weight and `HEAD_KEYS` the classifier's
    weight and bias in the state dict (model.finetune pads / replaces them). `frozen_stages`
    (default 0) is how many leading stages keep their BatchNorm layers in eval mode through
    `train()`.
    """

    STEM_KEY: str = ""
    HEAD_KEYS: tuple[str, str] = ("", "")

    def __init__(self):
        super().__init__()
        self.frozen_stages = 0

    def stages(self) -> list[list[nn.Module]]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "StagedModel":
        super().train(mode)
        # Frozen stages keep their running statistics: re-assert eval after every train().
        for stage in self.stages()[: self.frozen_stages]:
            for module in stage:
                for m in module.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
