"""The network a weights file asks for: a pruned file (deploy.prune) or checkpoint stores its config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from model.config import ModelConfig


def stored_model_config(state: object, model_cfg: ModelConfig, path: str | Path) -> ModelConfig:
    """`model_cfg` with the architecture stored in `state`, a weights file's contents (read with
    pipeline.pt_file.safe_load) from `path`, if it holds one.

    A firehose checkpoint or pruned file holds its config ("config": {"model": {...}}): its
    model.widths win, so a channel-pruned ResNet is rebuilt with its narrower convs; the run's
    num_classes and in_channels stay (the head is replaced as usual). A plain (torchvision)
    state dict holds no config: `model_cfg` is returned unchanged. ValueError naming `path` when
    the file holds another network than model.name.
    """
    stored = state.get("config", {}).get("model") if isinstance(state, dict) else None
    if not isinstance(stored, dict):
        return model_cfg
    if stored.get("name") != model_cfg.name:
        raise ValueError(f"{path}: holds a {stored.get('name')}, but model.name is {model_cfg.name}")
    return dataclasses.replace(model_cfg, widths=list(stored.get("widths", [])))
