"""Synthetic scalp photos: one condition's signature on a skin-and-hair scene.

Each condition draws its own visual signature (see :mod:`scalpnet.data.synthetic_signatures`)
into a region of a skin-and-hair background. Position, scale, rotation, skin and hair
colour, brightness, blur and noise vary from image to image, so a small CNN at 64-128 px
can learn the classes but no single pixel gives them away. The dataset on disk is
:mod:`scalpnet.data.synthetic_dataset`'s.

This module *draws* images; it never decodes or resizes photos (that is
``preprocess.py``'s job).
"""

from __future__ import annotations

import cv2
import numpy as np

from scalpnet.data.synthetic_signatures import SIGNATURES, Region, curves, smooth_noise
from scalpnet.labels import NUM_CLASSES

_SKIN_TONES = np.array(
    [
        (236, 196, 170),
        (224, 172, 140),
        (210, 160, 120),
        (190, 135, 100),
        (160, 110, 80),
        (120, 80, 58),
        (240, 205, 185),
        (200, 150, 130),
    ],
    dtype=np.float32,
)  # RGB
_HAIR_COLOURS = np.array(
    [(25, 20, 18), (55, 38, 28), (90, 62, 40), (130, 95, 60), (150, 150, 150), (185, 155, 110)],
    dtype=np.float32,
)  # RGB


# --------------------------------------------------------------------------- background
def _skin(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 skin: a tone with blotchy shading and pore-scale texture."""
    tone = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.9, 1.08, 3)
    shade = smooth_noise(rng, (h, w), int(rng.integers(3, 7))) * rng.uniform(6, 14)
    shade += smooth_noise(rng, (h, w), max(8, min(h, w) // 12)) * rng.uniform(2, 5)  # pores
    return tone.astype(np.float32)[None, None, :] + shade[:, :, None]


def _hair(rng, h, w, unit, hair_rgb) -> tuple[np.ndarray, np.ndarray]:
    """Combed strands over the whole image: ((h, w, 3) uint8 colour, (h, w) uint8 alpha)."""
    colour, alpha = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
    n = int(h * w / (unit * unit) * rng.uniform(0.05, 0.1))
    starts = np.stack([rng.uniform(-0.1 * w, w, n), rng.uniform(-0.1 * h, h, n)], axis=1)
    angles = rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.25, n)
    lengths = unit * rng.uniform(4, 14, n)
    strands = curves(rng, starts, angles, lengths, rng.uniform(-0.15, 0.15, n))
    width = max(1, round(unit * rng.uniform(0.15, 0.35)))
    for part, shade in zip(np.array_split(np.arange(n), 3), (0.8, 1.0, 1.25), strict=True):
        group = [strands[i] for i in part]
        rgb = tuple(int(v) for v in np.clip(hair_rgb * shade, 0, 255))
        cv2.polylines(colour, group, False, rgb, width, cv2.LINE_AA)
        cv2.polylines(alpha, group, False, 235, width, cv2.LINE_AA)
    return colour, alpha


# --------------------------------------------------------------------------- public API
def make_image(
    condition: int,
    rng: np.random.Generator,
    size: tuple[int, int] = (480, 640),
    where: tuple[float, float] | None = None,
) -> np.ndarray:
    """Draw one synthetic scalp photo showing ``condition``.

    Args:
        condition: index into ``labels.CONDITIONS`` (0-9).
        rng: the source of every random choice (seed it for reproducible images).
        size: (height, width) in pixels.
        where: (x, y) fractions of the width and height at which to centre the
            condition's signature; it then stays inside the quarter-size box
            (width/2 x height/2) around that point. None: a random place.

    Returns:
        (height, width, 3) uint8 RGB.
    """
    if not 0 <= condition < NUM_CLASSES:
        raise ValueError(f"condition must be in 0..{NUM_CLASSES - 1}, got {condition}")
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"size must be at least 32x32, got {size}")
    unit = min(h, w) / 48
    # Two streams: the scene (skin, hair, placement, camera) does not depend on the
    # condition, so two conditions drawn from equal generators differ only in the region.
    rng, sign_rng = rng.spawn(2)
    hair_rgb = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)

    if where is None:
        fx, fy = rng.uniform(0.25, 0.75, 2)
        scale = rng.uniform(0.7, 1.0)
    else:
        fx, fy = (float(np.clip(v, 0.0, 1.0)) for v in where)
        scale = rng.uniform(0.8, 1.0)
    # The region: a (h/2, w/2) box centred on the signature, clipped to the image.
    cx, cy = fx * w, fy * h
    x0, x1 = max(0, round(cx - w / 4)), min(w, round(cx + w / 4))
    y0, y1 = max(0, round(cy - h / 4)), min(h, round(cy + h / 4))

    skin = _skin(rng, h, w)
    keep = np.ones((h, w), np.float32)
    region = Region(
        skin=skin[y0:y1, x0:x1],
        keep=keep[y0:y1, x0:x1],
        cx=cx - x0,
        cy=cy - y0,
        radius=0.9 * scale * min(h, w) / 4,
        unit=unit,
        angle=float(sign_rng.uniform(0, 180)),
        hair_rgb=hair_rgb,
    )
    SIGNATURES[condition](region, sign_rng)

    hair_colour, hair_alpha = _hair(rng, h, w, unit, hair_rgb)
    alpha = hair_alpha.astype(np.float32) * (keep / 255)  # (h, w)
    img = hair_colour.astype(np.float32)  # (h, w, 3): skin + (hair - skin) * alpha, in place
    img -= skin
    img *= alpha[:, :, None]
    img += skin
    view = img[y0:y1, x0:x1]
    for draw in region.overlays:
        draw(view)

    # Photographic nuisance: exposure, white balance, focus, sensor noise.
    img *= rng.uniform(0.75, 1.2) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    sigma = rng.uniform(0, 1.0) * unit / 8
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(1, 6))
    return np.clip(img, 0, 255, out=img).astype(np.uint8)
