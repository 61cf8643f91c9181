"""The one ImageNet normalize in torch, for loaders that hand over uint8 (data.output: uint8) and
for the baseline's workers when they hand over float16.

A loader hands over `N x C x H x W` images in channels-last memory: either already normalized
float16, or uint8 in 0..255 (C = 3, or 4 with a zero 4th channel). `model_input` turns either
into what the model takes; on a GPU the uint8 path copies half the bytes of the float16 one and
normalizes there, so no CPU time goes into it.
"""

from __future__ import annotations

import functools

import torch

from pipeline.augment import IMAGENET_MEAN, IMAGENET_STD


@functools.lru_cache(maxsize=16)
def _scale_shift(device: torch.device, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1/std, -mean/std) per channel for 0..255 input, as C-vectors on `device`; a 4th (padding)
    channel gets (1, 0), so its zeros stay zero. Made once per device: no copy per batch."""
    mean = [255 * m for m in IMAGENET_MEAN] + [0.0] * (channels - 3)
    std = [255 * s for s in IMAGENET_STD] + [1.0] * (channels - 3)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    return 1 / std_t, -torch.tensor(mean, dtype=torch.float32, device=device) / std_t


# On the CPU a batch is normalized a few images at a time: the float32 temporary of a whole batch
# at 224 px (38 MB at 64 images) is above glibc's mmap threshold, so each call faulted in fresh
# pages, and ran slower per pixel than small chunks that stay in cache (RESULTS.md, "CPU levers").
CPU_CHUNK_ELEMENTS = 1 << 20


def normalize_hwc(images: torch.Tensor) -> torch.Tensor:
    """uint8 images with channels last (`[..., H, W, C]`) -> (x - mean) / std computed in fp32,
    rounded once to float16, same shape."""
    scale, shift = _scale_shift(images.device, images.shape[-1])
    if images.device.type != "cpu" or images.ndim < 4 or images.numel() <= CPU_CHUNK_ELEMENTS:
        return torch.addcmul(shift, images, scale).half()
    out = torch.empty(images.shape, dtype=torch.float16)
    step = max(1, CPU_CHUNK_ELEMENTS // images[0].numel())
    for i in range(0, len(images), step):
        out[i:i + step] = torch.addcmul(shift, images[i:i + step], scale)  # rounded to fp16 as .half() does
    return out


def model_input(images: torch.Tensor) -> torch.Tensor:
    """A loader's batch (`N x C x H x W`, channels-last) -> normalized float16, channels-last.
    Float batches are returned as they are (the loader normalized them); uint8 ones are normalized
    where they are, with no transpose (the NHWC storage is normalized in place of a copy)."""
    if images.dtype != torch.uint8:
        return images
    return normalize_hwc(images.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
