"""Exact top-1/top-5 over the whole validation split, summed over ranks."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.loader import Loader
from pipeline.normalize import model_input
from train.amp import Precision
from train.distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, epoch: int, precision: Precision,
             info: DistInfo) -> dict:
    """Evaluate `model` (the plain module, not the DDP wrapper) on every validation sample.

    Each rank counts its own share on the device (no host sync per batch); one all-reduce sums
    (correct@1, correct@5, count) over ranks. Returns {"top1", "top5"} in percent, "count"
    (images seen, all ranks) and "expected" (the split's size): they are equal when every
    validation image was counted exactly once.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.int64, device=info.device)
    for images, labels in loader.epoch(epoch):
        with precision.autocast():
            logits = model(precision.inputs(model_input(images)))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        totals[0] += hits[:, 0].sum()
        totals[1] += hits.any(dim=1).sum()
        totals[2] += labels.numel()
    model.train(was_training)
    correct1, correct5, count = all_reduce_sum(totals, info).tolist()
    return {
        "top1": 100.0 * correct1 / max(count, 1),
        "top5": 100.0 * correct5 / max(count, 1),
        "count": count,
        "expected": loader.split.num_samples,
    }
