"""The one augmentation spec both loaders read (torchvision's ImageNet presets).

Train: RandomResizedCrop (area in [data.min_area, 1], aspect ratio in ASPECT_RANGE, CROP_ATTEMPTS
tries, then a centre crop), an antialiased resize to the crop side, a horizontal flip with
FLIP_PROBABILITY, normalize with the ImageNet mean/std. Val: resize the shorter side to
`val_resize_shorter(size, ratio)` px, centre crop `size`, normalize.
"""

from __future__ import annotations

import math
import random

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # of RGB in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
ASPECT_RANGE = (3 / 4, 4 / 3)  # width / height of the random crop
CROP_ATTEMPTS = 10
FLIP_PROBABILITY = 0.5


def val_resize_shorter(size: int, crop_ratio: float) -> int:
    """Shorter side (px) the val image is resized to before its centre crop: 256 for 224 at 0.875."""
    return round(size / crop_ratio)


def random_resized_crop_box(w: int, h: int, rng: random.Random, min_area: float) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box for a w x h image, as PIL's (left, top, right, bottom)."""
    area = w * h
    lo, hi = (math.log(r) for r in ASPECT_RANGE)
    for _ in range(CROP_ATTEMPTS):
        a = area * rng.uniform(min_area, 1.0)
        r = math.exp(rng.uniform(lo, hi))
        cw, ch = round(math.sqrt(a * r)), round(math.sqrt(a / r))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, x + cw, y + ch
    r = w / h  # fallback: the whole image, clamped to the aspect range
    cw, ch = (w, round(w / ASPECT_RANGE[1])) if r > ASPECT_RANGE[1] else \
        (round(h * ASPECT_RANGE[0]), h) if r < ASPECT_RANGE[0] else (w, h)
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch
