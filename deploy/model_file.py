"""Model files the deploy commands read: a trainer checkpoint, or a pruned file from deploy.prune.

Both load with `torch.load(weights_only=True)` and hold the network as data: the resolved config
(`"config"`, whose `model.widths` describes a pruned ResNet) and state dicts. A trainer
checkpoint has "model" and "ema" weights and names the ones its best score came from in
`"selected_weights"`; a pruned file holds one set, under "model".
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from deploy.io import DeployError
from model import build_model
from pipeline.pt_file import CheckpointError, first_line, safe_load
from train import checkpoint as ckpt
from train.config import Config, ConfigError, from_dict

PRUNED_KIND = "firehose-pruned"  # the "kind" of a file written by deploy.prune
WEIGHTS = ("model", "ema")


def load_model_file(path: str | Path) -> dict:
    """A trainer checkpoint or a pruned file, loaded to the CPU with weights_only=True.
    DeployError naming the file when it is missing, unreadable, pickles code, or is neither."""
    try:
        state = safe_load(path)
    except CheckpointError as e:
        raise DeployError(str(e)) from None
    if not isinstance(state, dict):
        raise DeployError(f"{path}: not a firehose checkpoint or pruned model")
    required = ("model", "config") if state.get("kind") == PRUNED_KIND else ckpt.REQUIRED
    if any(k not in state for k in required):
        raise DeployError(f"{path}: not a firehose checkpoint or pruned model (missing keys)")
    return state


def build_from_file(state: dict, path: str | Path, weights: str | None = None) -> tuple[nn.Module, Config, str]:
    """(the network in eval mode with the chosen weights loaded, its config, which weights).

    `weights` "model" or "ema" overrides the file's `selected_weights` (the weights its best
    score came from; "model" where the key is absent). DeployError naming the file when the
    config is bad, the chosen weights are absent, or they do not fit the config's network.
    """
    try:
        cfg = from_dict(state["config"])
    except ConfigError as e:
        raise DeployError(f"{path}: stored {e}") from None
    which = weights or state.get("selected_weights", "model")
    if which not in WEIGHTS:
        raise DeployError(f"{path}: selected_weights={which!r} is not one of {WEIGHTS}")
    if not state.get(which):
        raise DeployError(f"{path}: has no {which!r} weights")
    net = build_model(cfg.model)
    try:
        net.load_state_dict(state[which])
    except RuntimeError as e:
        raise DeployError(f"{path}: {which} weights do not fit {cfg.model.name} "
                          f"({first_line(e)})") from None
    return net.eval(), cfg, which
