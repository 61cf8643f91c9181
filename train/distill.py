"""Knowledge distillation: a frozen teacher's softened logits as a second target for the student.

The teacher runs in eval mode with no grad, under the same autocast and memory format as the
student, on the same (augmented, mixed) batch: "consistent teaching" (Beyer et al. 2022). The
loss is Hinton et al.'s: alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha)
* the usual (label-smoothed, mixed) cross-entropy; T^2 keeps the soft term's gradients on the
scale of the hard term's as T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import ModelConfig, build_model, load_torchvision_state_dict
from pipeline.pt_file import CheckpointError, first_line, safe_load
from train.config import DistillConfig


class Distiller:
    """The teacher and the distillation loss for one run."""

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor) -> torch.Tensor:
        """The combined loss from both models' logits (N x classes) and the student's hard-label loss."""
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1),
                        F.log_softmax(teacher_logits.float() / t, dim=1), log_target=True, reduction="batchmean")
        return self.alpha * t * t * soft + (1 - self.alpha) * hard_loss

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the batch the student sees (call under the student's autocast)."""
        return self.teacher(images)


def load_teacher(cfg: DistillConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The teacher on the CPU: a firehose checkpoint (the weights its best score came from: EMA or
    model) or a torchvision-format state dict of `cfg.teacher_model`. Loaded with weights_only=True;
    CheckpointError naming the file if it cannot be read or does not fit."""
    state = safe_load(cfg.teacher, "teacher file (distill.teacher)")
    if isinstance(state, dict) and "config" in state and "model" in state:  # a firehose checkpoint
        weights = state["ema"] if state.get("selected_weights") == "ema" and state.get("ema") else state["model"]
        model_cfg = ModelConfig(**state["config"]["model"])
        if model_cfg.name != cfg.teacher_model:
            raise CheckpointError(f"{cfg.teacher}: holds a {model_cfg.name}, but distill.teacher_model is "
                                  f"{cfg.teacher_model}")
    else:
        weights, model_cfg = state, ModelConfig(name=cfg.teacher_model, num_classes=num_classes,
                                                in_channels=in_channels)
    teacher = build_model(model_cfg)
    try:
        skipped = load_torchvision_state_dict(teacher, weights)
    except (KeyError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{cfg.teacher}: weights do not fit {cfg.teacher_model}: {first_line(e)}") from None
    if skipped or model_cfg.num_classes != num_classes:
        raise CheckpointError(f"{cfg.teacher}: the teacher's head does not have the student's {num_classes} "
                              "classes (distillation needs the same classes)")
    return teacher
