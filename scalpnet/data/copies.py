"""Kaggle-style copies of a photo: what the near-duplicate audit must recognise.

The Kaggle set was grown from fewer photos by 90° turns and flips, rotations by any angle
with a crop, crops, zoom, shear, greyscale and colour shifts, JPEG re-encoding and resizing,
often two or three stacked. :func:`plant` makes such a copy, seeded, so tests and
``benchmarks/bench_dedupe.py`` measure the audit on the same kinds of copies.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from scalpnet.data.preprocess import load_image

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def turn(rgb: np.ndarray, d: int) -> np.ndarray:
    """Rotation/flip d (0-7) of an (H, W, 3) image: rot90 d // 2 times, then flip if d is odd."""
    out = np.rot90(rgb, d // 2)
    return np.ascontiguousarray(out[:, ::-1] if d % 2 else out)


def _turn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return turn(rgb, int(rng.integers(1, 8)))


def _rotate(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Any angle (10-80° either way), cropped to the largest upright square inside."""
    h, w = rgb.shape[:2]
    angle = float(rng.uniform(10, 80) * rng.choice([-1, 1]))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    out = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR)
    a = np.radians(abs(angle) % 90)
    side = min(h, w) / (np.cos(a) + np.sin(a))  # the square that stays inside the turned image
    y, x = int((h - side) / 2), int((w - side) / 2)
    return out[y : y + int(side), x : x + int(side)]


def _crop(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep 70-90% of each side, at a random place."""
    h, w = rgb.shape[:2]
    f = rng.uniform(0.7, 0.9)
    ch, cw = int(h * f), int(w * f)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return rgb[y : y + ch, x : x + cw]


def _zoom(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zoom in 1.1-1.4x about the centre, back to the same size."""
    h, w = rgb.shape[:2]
    f = 1 / rng.uniform(1.1, 1.4)
    ch, cw = int(h * f), int(w * f)
    y, x = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(rgb[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def _shear(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shear by 8-15° along x or y, then crop the skewed border away."""
    h, w = rgb.shape[:2]
    k = float(np.tan(np.radians(rng.uniform(8, 15))) * rng.choice([-1, 1]))
    if rng.random() < 0.5:
        m = np.float32([[1, k, -k * h / 2], [0, 1, 0]])
        out = cv2.warpAffine(rgb, m, (w, h))
        cut = int(abs(k) * h / 2) + 1
        return out[:, cut : w - cut]
    m = np.float32([[1, 0, 0], [k, 1, -k * w / 2]])
    out = cv2.warpAffine(rgb, m, (w, h))
    cut = int(abs(k) * w / 2) + 1
    return out[cut : h - cut]


def _grey(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


def _colour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, per-channel gain and a hue shift."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int16) + int(rng.integers(-12, 13))) % 180
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.85, 1.15, 3)
    return np.clip(out * gain + rng.uniform(-25, 25), 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    quality = int(rng.integers(60, 93))
    _, data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return load_image(data.tobytes())


def _resize(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(1, round(w * 0.6)), max(1, round(h * 0.6)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


FAMILIES: dict[str, Transform] = {
    "turn": _turn,
    "rotate": _rotate,
    "crop": _crop,
    "zoom": _zoom,
    "shear": _shear,
    "grey": _grey,
    "colour": _colour,
    "jpeg": _jpeg,
    "resize": _resize,
}


def plant(
    rgb: np.ndarray, rng: np.random.Generator, families: tuple[str, ...] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """A Kaggle-style copy of an (H, W, 3) uint8 RGB image and the families applied.

    Args:
        families: apply exactly these, in this order; None: two or three distinct random
            families (geometric ones first, then colour, then re-encoding, as an export would).

    Returns:
        (h, w, 3) uint8 copy, and the names of the transformations it went through.
    """
    if families is None:
        names = list(FAMILIES)
        picked = rng.choice(len(names), int(rng.integers(2, 4)), replace=False)
        families = tuple(names[k] for k in sorted(picked.tolist()))
    out = np.ascontiguousarray(rgb)
    for name in families:
        out = np.ascontiguousarray(FAMILIES[name](out, rng))
    return out, tuple(families)
