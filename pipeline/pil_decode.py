"""RandomResizedCrop from JPEG bytes with PIL, decoding at a reduced scale where that loses nothing.

libjpeg-turbo can decode a JPEG at 1/2, 1/4 or 1/8 of its size in the DCT domain (PIL's
`Image.draft`), for a fraction of a full decode's work. A crop that is resized down to `size` px
only needs its pixels at `size` px resolution, so the decode is scaled by the largest power of two
that still leaves the crop at least `size` px wide and high: the resize then reduces less, and
nothing finer than the output is lost beyond the scaling itself. Large crops of large images
qualify (the crop must be >= 2 x size on both sides); at 224 px on ImageNet's ~500 x 375 photos
none does. The scaled decode followed by a resize is a blurrier kernel than one antialiased
resize, so it is a lever to choose (`draft=True`), off by default. DALI 2.4's decoders have no
such scaled decode.
"""

from __future__ import annotations

import io
import random

from PIL import Image

from pipeline.augment import random_resized_crop_box

DCT_SCALES = (8, 4, 2)  # the reductions libjpeg-turbo's scaled decode offers through PIL, largest first


def draft_reduction(crop_w: float, crop_h: float, size: int) -> int:
    """The largest reduction r in DCT_SCALES (else 1) with the crop still >= size px on both sides
    after it: crop_w / r >= size and crop_h / r >= size."""
    return next((r for r in DCT_SCALES if min(crop_w, crop_h) >= r * size), 1)


def resized_random_crop(jpeg: bytes, size: int, min_area: float, rng: random.Random,
                        draft: bool = False) -> Image.Image:
    """RandomResizedCrop (pipeline/augment.py's box, drawn from `rng` on the full-size image) of
    the encoded image, resized to size x size with PIL's antialiased bilinear filter, RGB. With
    `draft`, the decode is scaled down where draft_reduction allows; the crop box is the same
    either way (same rng draws), so only the resampling differs. Raises what PIL raises for bad data."""
    im = Image.open(io.BytesIO(jpeg))
    w, h = im.size  # from the header: nothing is decoded yet
    box = random_resized_crop_box(w, h, rng, min_area)
    reduction = draft_reduction(box[2] - box[0], box[3] - box[1], size) if draft else 1
    if reduction > 1:
        # PIL picks the largest reduction that keeps at least this size (no-op for a non-JPEG)
        im.draft("RGB", (max(1, w // reduction), max(1, h // reduction)))
    im = im.convert("RGB")
    # Output pixel i of a 1/r decode covers source pixels [r*i, r*(i+1)): the box scales by 1/r.
    r = round(w / im.width)
    return im.resize((size, size), Image.Resampling.BILINEAR, box=tuple(v / r for v in box))
