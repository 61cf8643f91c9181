"""Optimizer, learning-rate schedule, EMA of weights and mixup/cutmix: the pieces of one step."""

from __future__ import annotations

import copy
import math
import random

import torch
from torch import nn

from train.config import OptimConfig


def peak_lr(optim_cfg: OptimConfig, global_batch: int, lr_scale: float = 1.0) -> float:
    """The schedule's peak lr: base_lr (per 256 images) x global_batch / 256 x lr_scale."""
    return optim_cfg.base_lr * global_batch / 256 * lr_scale


def build_optimizer(model: nn.Module, optim_cfg: OptimConfig, lr: float, fused: bool = False
                    ) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters of `model`, in two groups.

    Group 0 ("decay"): tensors with ndim >= 2 (conv and linear weights) get weight decay.
    Group 1 ("no_decay"): ndim < 2 (BatchNorm gamma/beta, biases) get none. Grouping by tensor
    rank, not by name, so no parameter is missed whatever the module calls it. Frozen
    parameters (requires_grad False: call freeze_stages first) are left out. `fused` (for CUDA)
    runs one kernel for all parameters and lets fp16's GradScaler skip its per-step host sync.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": optim_cfg.weight_decay, "name": "decay"},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "name": "no_decay"},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov,
                           fused=fused or None)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Learning rate for optimizer step `step` (0-based), a pure function of its arguments.

    Linear warmup: peak * (step + 1) / warmup_steps for step < warmup_steps (so step 0 already
    trains, and step warmup_steps - 1 is at peak). Then half a cosine from peak at
    step = warmup_steps down to exactly 0 at step = total_steps.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of a model's floating-point state (parameters and BN
    statistics), updated on the device with one fused lerp per step: no host sync.

    `module` is a copy of the model holding the averaged weights; evaluate it like the model.
    Integer buffers (BN's num_batches_tracked) are copied. Build it after the model is on its
    device; it keeps views of the model's tensors, which in-place optimizer steps and
    load_state_dict update.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        ema, src = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema.items() if v.is_floating_point()]
        others = [k for k in ema if k not in set(floats)]
        self._ema_f, self._src_f = [ema[k] for k in floats], [src[k] for k in floats]
        self._ema_o, self._src_o = [ema[k] for k in others], [src[k] for k in others]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._ema_f, self._src_f, 1.0 - self.decay)
        torch._foreach_copy_(self._ema_o, self._src_o)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)  # copies in place: the views above stay valid


def mix_batch(images: torch.Tensor, labels: torch.Tensor, optim_cfg: OptimConfig, seed: int, step: int
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup or cutmix on a device batch: returns (images, partner labels, lam).

    The loss is lam * CE(out, labels) + (1 - lam) * CE(out, partner). The partner of sample i
    is sample N-1-i (the flipped batch, as timm does), so no device RNG is needed; lam and the
    cutmix box come from a host RNG seeded by (seed, step), so a resumed run mixes identically.
    With both alphas 0 this returns (images, labels, 1.0) untouched.
    """
    use_mix, use_cut = optim_cfg.mixup_alpha > 0, optim_cfg.cutmix_alpha > 0
    if not (use_mix or use_cut):
        return images, labels, 1.0
    rng = random.Random(f"mix/{seed}/{step}")
    cut = use_cut and (not use_mix or rng.random() < 0.5)
    partner = labels.flip(0)
    if not cut:
        lam = rng.betavariate(optim_cfg.mixup_alpha, optim_cfg.mixup_alpha)
        return images.lerp(images.flip(0), 1.0 - lam), partner, lam
    lam = rng.betavariate(optim_cfg.cutmix_alpha, optim_cfg.cutmix_alpha)
    h, w = images.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = rng.randrange(h), rng.randrange(w)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = images.clone()
    out[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    return out, partner, lam
