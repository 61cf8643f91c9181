"""The network a weights file asks for: a pruned file (deploy.prune) or checkpoint stores its config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from model.config import ModelConfig


def stored_model_config(path: str | Path, model_cfg: ModelConfig) -> ModelConfig:
    """`model_cfg` with the architecture stored in the weights file at `path`, if any.

    A firehose checkpoint or pruned file holds its config ("config": {"model": {...}}): its
    model.widths win, so a channel-pruned ResNet is rebuilt with its narrower convs; the run's
    num_classes and in_channels stay (the head is replaced as usual). A plain (torchvision)
    state dict holds no config: `model_cfg` is returned unchanged. ValueError naming the file
    when it cannot be loaded with weights_only=True or holds another network than model.name.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, or a pickle that would run code
        raise ValueError(f"{path}: cannot load weights with weights_only=True "
                         f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]})") from None
    stored = state.get("config", {}).get("model") if isinstance(state, dict) else None
    if not isinstance(stored, dict):
        return model_cfg
    if stored.get("name") != model_cfg.name:
        raise ValueError(f"{path}: holds a {stored.get('name')}, but model.name is {model_cfg.name}")
    return dataclasses.replace(model_cfg, widths=list(stored.get("widths", [])))
