"""The images of the synthetic ImageNet: one family of pattern per class, drawn afresh per image.

Each class is one family of pattern (shape x hue x texture frequency); every image draws its own
position, scale, rotation, clutter, noise, size and JPEG quality, so a small CNN can learn the
classes but not by a trivial cue. An image is a function of its key alone (seed, split, class,
index), so the output does not depend on which process draws it or in what order.
tools/make_synthetic_imagenet.py lays the images out as ImageNet does.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "stripes", "checker", "rings", "cross", "diamond")
TEXTURES = {"plain": 0.0, "coarse": 1.5, "fine": 4.0}  # name: stripe cycles per object radius
HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue",
             "violet", "magenta", "rose")
REALISTIC_QUALITY = 90
REALISTIC_NOISE = (0.09, 0.13)  # luma noise std, of full scale: tuned so 500x375 q90 is ~110 KB


@dataclass(frozen=True)
class ImageSpec:
    """How the images are drawn: sides in min_side..max_side px at a JPEG quality in quality_range
    (inclusive), or, when `realistic`, ImageNet-like ~500x375 px at quality 90 (the other fields
    ignored). Raises ValueError on a bad range."""

    min_side: int = 120
    max_side: int = 640
    quality_range: tuple[int, int] = (70, 95)
    realistic: bool = False

    def __post_init__(self):
        lo, hi = self.quality_range
        if not (1 <= lo <= hi <= 100 and 16 <= self.min_side <= self.max_side):
            raise ValueError(f"bad quality range {lo},{hi} or sides {self.min_side}..{self.max_side}")


def class_style(c: int) -> tuple[int, float, int]:
    """Return (shape index, hue in [0,1), texture index) for class c.

    (shape, texture) pairs are distinct for c < 24 (8 x 3, coprime cycles); hue steps by the
    golden ratio so neighbouring classes never share a colour.
    """
    return c % len(SHAPES), (c * 0.381966) % 1.0, c % len(TEXTURES)


def class_name(c: int) -> str:
    """Human-readable class name for LOC_synset_mapping.txt, e.g. 'red circle, plain'."""
    shape, hue, tex = class_style(c)
    return f"{HUE_NAMES[int(hue * 12 + 0.5) % 12]} {SHAPES[shape]}, {list(TEXTURES)[tex]}"


def _image_size(rng: np.random.Generator, min_side: int, max_side: int,
                realistic: bool) -> tuple[int, int]:
    """Draw (width, height) in pixels: ImageNet-like 500x375 mostly, or anything in range."""
    if realistic:
        long = 500 if rng.random() < 0.8 else int(rng.integers(400, 501))
        aspect = 4 / 3 if rng.random() < 0.75 else rng.uniform(1.0, 1.6)
    else:
        long = int(rng.integers(min_side, max_side + 1))
        aspect = rng.uniform(1.0, 1.6)
    short = int(round(long / aspect)) if realistic else max(min_side, int(round(long / aspect)))
    return (long, short) if rng.random() < 0.7 else (short, long)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of SHAPES[shape] in object coordinates (u, v; object radius 1)."""
    r, box, s3 = np.hypot(u, v), np.maximum(np.abs(u), np.abs(v)), np.sqrt(3.0)
    masks = {  # lambdas, so only the one asked for is computed
        "circle": lambda: r < 1,
        "square": lambda: box < 0.8,
        "triangle": lambda: (v > -0.5) & (s3 * u + v < 1) & (-s3 * u + v < 1),
        "stripes": lambda: (np.sin(2.5 * np.pi * u) > 0) & (box < 1),
        "checker": lambda: (np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v) > 0) & (box < 0.9),
        "rings": lambda: (np.sin(3 * np.pi * r) > 0) & (r < 1),
        "cross": lambda: ((np.abs(u) < 0.3) | (np.abs(v) < 0.3)) & (box < 1),
        "diamond": lambda: np.abs(u) + np.abs(v) < 1,
    }
    return masks[SHAPES[shape]]()


def render(c: int, rng: np.random.Generator, width: int, height: int,
           realistic: bool = False) -> np.ndarray:
    """Render one image of class c as a uint8 array (height, width, 3)."""
    shape, hue, tex = class_style(c)
    side = min(width, height)
    # Background clutter: a coarse random colour field, smoothly upsampled.
    grid = rng.uniform(0.15, 0.85, (4, 4, 3)) * rng.uniform(0.5, 1.0, (1, 1, 3))
    img = np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize(
        (width, height), Image.BILINEAR), dtype=np.float32) * np.float32(1 / 255)
    # A few faint random blobs of any hue, so colour alone is not the whole story.
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, rad = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.2) * side
        ys, xs = _window(cy, rad, height), _window(cx, rad, width)
        yy, xx = np.ogrid[ys, xs]
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < rad * rad)[..., None]
        img[ys, xs] = np.where(blob, 0.6 * img[ys, xs] + 0.4 * rng.uniform(0, 1, 3).astype(np.float32),
                               img[ys, xs])
    # The class object: random centre, scale and rotation, class hue with a little jitter.
    radius = rng.uniform(0.25, 0.45) * side
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    theta, phase = rng.uniform(0, 2 * np.pi, 2)
    rgb = colorsys.hsv_to_rgb((hue + rng.normal(0, 0.02)) % 1.0, rng.uniform(0.65, 1.0),
                              rng.uniform(0.7, 1.0))
    ys, xs = _window(cy, 1.5 * radius, height), _window(cx, 1.5 * radius, width)  # holds r < 1.5
    yy, xx = np.ogrid[ys, xs]
    dx, dy = (xx.astype(np.float32) - cx) / radius, (yy.astype(np.float32) - cy) / radius
    u, v = np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy
    texture = 0.5 + 0.5 * np.cos(2 * np.pi * list(TEXTURES.values())[tex] * (u + 0.5 * v) + phase)
    fg = np.asarray(rgb, np.float32) * (0.55 + 0.45 * texture)[..., None]
    img[ys, xs] = np.where(_shape_mask(shape, u, v)[..., None], fg, img[ys, xs])
    # Pixel noise: real photos carry fine detail, which is what makes a 500x375 q90 JPEG ~110 KB.
    sigma = rng.uniform(*(REALISTIC_NOISE if realistic else (0.0, 0.05)))
    img += np.float32(sigma) * rng.standard_normal((height, width, 1), dtype=np.float32)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.int16)
    chroma = 8 if realistic else 4
    out += rng.integers(-chroma, chroma + 1, out.shape, dtype=np.int16)  # colour noise, cheaply
    return np.clip(out, 0, 255).astype(np.uint8)


def _window(centre: float, half: float, size: int) -> slice:
    """Pixel slice [centre - half, centre + half] clipped to [0, size)."""
    return slice(max(0, int(centre - half)), min(size, int(centre + half) + 2))


def keyed_image(c: int, key: tuple[int, ...], spec: ImageSpec) -> tuple[Image.Image, int]:
    """The image of class c keyed by (seed, split, class, index): (PIL RGB image, JPEG quality)."""
    rng = np.random.default_rng(key)
    width, height = _image_size(rng, spec.min_side, spec.max_side, spec.realistic)
    lo, hi = spec.quality_range
    quality = REALISTIC_QUALITY if spec.realistic else int(rng.integers(lo, hi + 1))
    return Image.fromarray(render(c, rng, width, height, spec.realistic)), quality
