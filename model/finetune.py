"""Fine-tuning helpers: load torchvision weights (4-channel stem, new head) and freeze stages.

Both work for every network here (ResNets and MobileNetV3): each names its stem conv, its head
and its five stages (model.stages.StagedModel).
"""

import torch

from model.stages import StagedModel


def load_torchvision_state_dict(model: StagedModel, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a torchvision state dict of the same architecture into `model`; return skipped keys.

    - A 3-channel stem conv (e.g. conv1.weight (64, 3, 7, 7)) loaded into a 4-channel stem is
      padded with a zero input channel, matching how the pipeline pads RGB with a zero fourth
      channel, so outputs equal the 3-channel network's.
    - Head weights (fc.*; classifier.3.* for MobileNetV3) whose shapes differ from the model's
      head (num_classes changed) are skipped and keep their fresh init; their names are
      returned, sorted.
    Anything else that is missing, unexpected or mis-shaped raises, as with strict=True.
    """
    state = dict(state_dict)
    own = model.state_dict()
    stem, own_stem = state.get(model.STEM_KEY), own[model.STEM_KEY]
    if stem is not None and stem.shape[1] < own_stem.shape[1] and stem.shape[0] == own_stem.shape[0]:
        pad = stem.new_zeros(stem.shape[0], own_stem.shape[1] - stem.shape[1], *stem.shape[2:])
        state[model.STEM_KEY] = torch.cat([stem, pad], dim=1)
    skipped = sorted(k for k in model.HEAD_KEYS if k in state and state[k].shape != own[k].shape)
    for k in skipped:
        del state[k]
    result = model.load_state_dict(state, strict=False)
    if sorted(result.missing_keys) != skipped or result.unexpected_keys:
        raise KeyError(
            f"state dict does not match {type(model).__name__}: missing "
            f"{sorted(set(result.missing_keys) - set(skipped))}, unexpected {result.unexpected_keys}"
        )
    return skipped


def freeze_stages(model: StagedModel, num_frozen: int) -> None:
    """Freeze the first `num_frozen` of the five stages (ResNet: stem, layer1..layer4; MobileNetV3:
    the features at output stride 2, 4, 8, 16, 32); the head always trains. 0 freezes nothing,
    1 the stem (ResNet: conv1, bn1), 2 also layer1, ... 5 all.

    Frozen parameters get requires_grad=False (build the optimizer after calling this, or
    it still holds them); other stages are set trainable again, so calling it twice with
    different values does what the last call says. Frozen BatchNorm layers stay in eval mode
    (running statistics fixed) because StagedModel.train() re-applies `model.frozen_stages` on
    every call, so the trainer's usual model.train()/model.eval() needs nothing extra.
    """
    stages = model.stages()
    if not 0 <= num_frozen <= len(stages):
        raise ValueError(f"num_frozen={num_frozen} must be in 0..{len(stages)}")
    for i, stage in enumerate(stages):
        for module in stage:
            for p in module.parameters():
                p.requires_grad_(i >= num_frozen)
    model.frozen_stages = num_frozen
    model.train(model.training)
