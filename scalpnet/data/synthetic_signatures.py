"""The ten conditions' visual signatures, each drawn into a region of a synthetic photo.

A signature (colour, texture, blobs, rings or lines) paints the bare skin of its
:class:`Region`, removes hair through ``keep``, and may add overlays that lie on top of
the hair. :func:`scalpnet.data.synthetic.make_image` lays out the scene around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from scalpnet.labels import NUM_CLASSES


@dataclass
class Region:
    """The part of the image (about a quarter) a condition may draw in; all views, float32."""

    skin: np.ndarray  # (h, w, 3) the bare skin, before hair is laid over it
    keep: np.ndarray  # (h, w) 1 = hair kept, 0 = hair removed
    cx: float  # signature centre, region pixel coordinates
    cy: float
    radius: float  # how far the signature may reach from its centre, pixels
    unit: float  # size unit: min(H, W) / 48 pixels of the full image
    angle: float  # degrees
    hair_rgb: np.ndarray  # (3,) this image's hair colour
    # Drawn after the hair is composited: things lying on top (lice, flakes, shed hairs).
    overlays: list[Callable[[np.ndarray], None]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.skin.shape[:2]

    def scatter(self, rng: np.random.Generator, n: int, spread: float = 1.0) -> np.ndarray:
        """(n, 2) float points in a disc of radius ``spread * radius`` around the centre."""
        r = self.radius * spread * np.sqrt(rng.uniform(0, 1, n))
        t = rng.uniform(0, 2 * np.pi, n)
        return np.stack([self.cx + r * np.cos(t), self.cy + r * np.sin(t)], axis=1)


# --------------------------------------------------------------------------- drawing helpers
def _mask(shape: tuple[int, int]) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def _paint(target: np.ndarray, mask: np.ndarray, colour, opacity: float = 1.0) -> None:
    """Blend ``colour`` (RGB triple or (h, w, 3) array) into ``target`` where ``mask`` is set."""
    x, y, w, h = cv2.boundingRect(mask)  # only the part that changes
    if w == 0 or h == 0:
        return
    box = np.s_[y : y + h, x : x + w]
    colour = np.asarray(colour, dtype=np.float32)
    if colour.ndim == 3:
        colour = colour[box]
    alpha = mask[box].astype(np.float32) * (opacity / 255.0)  # (h, w)
    target[box] += (colour - target[box]) * alpha[:, :, None]


def _soften(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; a wide one runs at reduced resolution (the same look, many times faster)."""
    if sigma <= 3:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    h, w = image.shape[:2]
    factor = sigma / 2
    small = cv2.resize(image, (max(1, round(w / factor)), max(1, round(h / factor))),
                       interpolation=cv2.INTER_AREA)  # fmt: skip
    small = cv2.GaussianBlur(small, (0, 0), 2)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(float(x)), round(float(y))


def _ellipse(mask, centre, axes, angle, value=255, thickness=-1) -> None:
    axes = (max(1, round(axes[0])), max(1, round(axes[1])))
    cv2.ellipse(mask, _pt(*centre), axes, float(angle), 0, 360, value, thickness, cv2.LINE_AA)


def _blob_polygon(rng, cx, cy, radius, vertices, jitter) -> np.ndarray:
    """(vertices, 1, 2) int32 irregular polygon around (cx, cy)."""
    t = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    r = radius * rng.uniform(1 - jitter, 1 + jitter, vertices)
    pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def curves(rng, starts, angles, lengths, bend, points=6) -> list[np.ndarray]:
    """Gently curved strands: one (points, 1, 2) int32 polyline per start point."""
    t = np.linspace(0, 1, points)[None, :]  # (1, points)
    direction = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (n, 2)
    normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
    sag = (bend * lengths)[:, None] * (4 * t * (1 - t))  # (n, points)
    xy = (
        starts[:, None, :]
        + direction[:, None, :] * (lengths[:, None] * t)[:, :, None]
        + normal[:, None, :] * sag[:, :, None]
    )
    return list(np.round(xy).astype(np.int32).reshape(len(starts), points, 1, 2))


def smooth_noise(rng, shape, cells) -> np.ndarray:
    """(h, w) float32 low-frequency noise, roughly N(0, 1)."""
    small = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


# --------------------------------------------------------------------------- the ten signatures
def _alopecia_areata(g: Region, rng: np.random.Generator) -> None:
    """One or two sharp-edged, smooth, hairless oval patches with a few short broken hairs."""
    m = _mask(g.shape)
    for _ in range(rng.integers(1, 3)):
        c = g.scatter(rng, 1, 0.3)[0]
        axes = g.radius * rng.uniform(0.6, 0.9), g.radius * rng.uniform(0.45, 0.7)
        _ellipse(m, c, axes, g.angle + rng.uniform(-30, 30))
    g.keep *= 1 - m.astype(np.float32) / 255
    smooth = _soften(g.skin, 2 * g.unit) * 1.06 + np.float32([6, 0, 0])
    _paint(g.skin, m, smooth)
    ys, xs = np.nonzero(m[:: max(1, m.shape[0] // 40), :: max(1, m.shape[1] // 40)])
    if len(xs):
        step = max(1, m.shape[0] // 40), max(1, m.shape[1] // 40)
        pick = rng.choice(len(xs), min(len(xs), 12), replace=False)
        starts = np.stack([xs[pick] * step[1], ys[pick] * step[0]], axis=1).astype(np.float32)
        stubs = curves(
            rng,
            starts,
            rng.uniform(0, 2 * np.pi, len(pick)),
            np.full(len(pick), 0.8 * g.unit),
            np.zeros(len(pick)),
            2,
        )
        colour = tuple(float(v) for v in g.hair_rgb)
        g.overlays.append(lambda img: cv2.polylines(img, stubs, False, colour, 2, cv2.LINE_8))


def _contact_dermatitis(g: Region, rng: np.random.Generator) -> None:
    """A diffuse, irregular red blotch sprinkled with small dark-red papules."""
    m = _mask(g.shape)
    for c in g.scatter(rng, rng.integers(5, 10), 0.55):
        cv2.circle(m, _pt(*c), round(g.radius * rng.uniform(0.25, 0.45)), 255, -1, cv2.LINE_AA)
    m = _soften(m, 1.5 * g.unit)
    red = g.skin * np.float32([1.0, 0.62, 0.62]) + np.float32([45, 0, 0])
    _paint(g.skin, m, red, rng.uniform(0.75, 0.95))
    dots = _mask(g.shape)
    for c in g.scatter(rng, rng.integers(25, 50), 0.7):
        cv2.circle(
            dots, _pt(*c), max(1, round(g.unit * rng.uniform(0.3, 0.6))), 255, -1, cv2.LINE_AA
        )
    _paint(g.skin, dots, (160, 40, 45), 0.8)


def _folliculitis(g: Region, rng: np.random.Generator) -> None:
    """Scattered pustules: a red halo around a raised yellow-white head, on top of the hair."""
    centres = g.scatter(rng, rng.integers(8, 18), 0.85)
    halo, head = _mask(g.shape), _mask(g.shape)
    for c in centres:
        r = g.unit * rng.uniform(1.2, 2.0)
        cv2.circle(halo, _pt(*c), round(r), 255, -1, cv2.LINE_AA)
        cv2.circle(head, _pt(*c), max(1, round(r * rng.uniform(0.4, 0.55))), 255, -1, cv2.LINE_AA)
    halo = _soften(halo, 0.4 * g.unit)
    _paint(g.skin, halo, (205, 55, 55), 0.9)

    def heads(img: np.ndarray) -> None:
        _paint(img, halo, (205, 55, 55), 0.5)
        _paint(img, head, (245, 235, 170), 0.95)

    g.overlays.append(heads)


def _head_lice(g: Region, rng: np.random.Generator) -> None:
    """A few brown six-legged lice and many small white nits lying on the hair."""
    lice = [(c, rng.uniform(0, 180)) for c in g.scatter(rng, rng.integers(3, 6), 0.7)]
    nits = g.scatter(rng, rng.integers(15, 30), 0.95)

    def draw(img: np.ndarray) -> None:
        body, legs, eggs = _mask(img.shape[:2]), _mask(img.shape[:2]), _mask(img.shape[:2])
        for c, angle in lice:
            length = g.unit * rng.uniform(2.2, 3.0)
            _ellipse(body, c, (length, length * 0.45), angle)
            a = np.deg2rad(angle)
            along, across = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
            for k in (-0.4, 0.0, 0.4):
                for side in (-1, 1):
                    root = c + along * k * length
                    tip = root + across * side * length * 0.9 + along * k * length * 0.5
                    cv2.line(
                        legs, _pt(*root), _pt(*tip), 255, max(1, round(g.unit * 0.25)), cv2.LINE_AA
                    )
        for c in nits:
            _ellipse(eggs, c, (g.unit * 0.8, g.unit * 0.45), g.angle + rng.uniform(-20, 20))
        _paint(img, legs, (70, 45, 30), 0.9)
        _paint(img, body, (120, 75, 45), 0.95)
        _paint(img, eggs, (240, 238, 225), 0.95)

    g.overlays.append(draw)


def _lichen_planus(g: Region, rng: np.random.Generator) -> None:
    """Flat violet polygonal papules crossed by fine white lines (Wickham striae)."""
    m, lines = _mask(g.shape), _mask(g.shape)
    for c in g.scatter(rng, rng.integers(8, 14), 0.8):
        r = g.unit * rng.uniform(1.5, 2.8)
        cv2.fillPoly(m, [_blob_polygon(rng, *c, r, rng.integers(5, 8), 0.15)], 255, cv2.LINE_AA)
        for _ in range(2):
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * r * 0.7
            cv2.line(lines, _pt(*(c - d)), _pt(*(c + d)), 255, 1, cv2.LINE_AA)
    _paint(g.skin, m, (125, 65, 130), rng.uniform(0.85, 0.95))
    _paint(g.skin, cv2.bitwise_and(lines, m), (235, 225, 240), 0.8)
    g.keep *= 1 - 0.5 * m.astype(np.float32) / 255


def _male_pattern_baldness(g: Region, rng: np.random.Generator) -> None:
    """A large soft-edged thinning area: shiny scalp with sparse, fine, short hairs."""
    d = _mask(g.shape)
    _ellipse(d, (g.cx, g.cy), (g.radius * 0.85, g.radius * rng.uniform(0.65, 0.85)), g.angle)
    soft = _soften(d, 0.1 * g.radius).astype(np.float32) / 255
    g.keep *= 1 - 0.97 * soft
    shine = _mask(g.shape)
    _ellipse(shine, g.scatter(rng, 1, 0.3)[0], (g.radius * 0.55, g.radius * 0.3), g.angle)
    shine = _soften(shine, 0.12 * g.radius)
    _paint(g.skin, shine, (255, 250, 245), 0.5)
    pts = g.scatter(rng, rng.integers(40, 80), 0.8)
    fine = curves(
        rng,
        pts,
        rng.uniform(0, 2 * np.pi, len(pts)),
        g.unit * rng.uniform(0.8, 1.6, len(pts)),
        rng.uniform(-0.2, 0.2, len(pts)),
        3,
    )
    colour = tuple(float(v) for v in 0.5 * g.hair_rgb + 0.5 * np.float32([200, 170, 140]))
    g.overlays.append(lambda img: cv2.polylines(img, fine, False, colour, 1, cv2.LINE_8))


def _psoriasis(g: Region, rng: np.random.Generator) -> None:
    """Sharp-edged salmon-red plaques covered in thick silvery-white scale."""
    plaque = _mask(g.shape)
    for c in g.scatter(rng, rng.integers(1, 3), 0.3):
        poly = _blob_polygon(rng, *c, g.radius * rng.uniform(0.45, 0.7), 12, 0.25)
        cv2.fillPoly(plaque, [poly], 255, cv2.LINE_AA)
    _paint(g.skin, plaque, (205, 85, 85), 0.92)
    g.keep *= 1 - 0.7 * plaque.astype(np.float32) / 255
    texture = smooth_noise(rng, g.shape, max(4, round(g.shape[1] / (1.2 * g.unit))))
    scale = ((texture > 0.1) * plaque).astype(np.uint8)  # (h, w) patchy flakes inside the plaque

    def flakes(img: np.ndarray) -> None:
        _paint(img, scale, (228, 228, 232), 0.9)

    g.overlays.append(flakes)


def _seborrheic_dermatitis(g: Region, rng: np.random.Generator) -> None:
    """A faint pink greasy area with scattered yellow flakes of varied size."""
    base = _mask(g.shape)
    _ellipse(base, (g.cx, g.cy), (g.radius * 0.8, g.radius * 0.6), g.angle)
    base = _soften(base, 0.2 * g.radius)
    _paint(g.skin, base, g.skin * np.float32([1.0, 0.85, 0.8]) + np.float32([20, 0, 0]), 0.8)
    flakes = []
    for c in g.scatter(rng, rng.integers(25, 50), 0.85):
        r = g.unit * rng.uniform(0.5, 1.6)
        flakes.append(_blob_polygon(rng, *c, r, rng.integers(4, 7), 0.4))

    def draw(img: np.ndarray) -> None:
        m = _mask(img.shape[:2])
        cv2.fillPoly(m, flakes, 255, cv2.LINE_AA)
        _paint(img, m, (225, 200, 105), 0.9)

    g.overlays.append(draw)


def _telogen_effluvium(g: Region, rng: np.random.Generator) -> None:
    """Thinner hair and many long, strongly curved shed hairs, each with a white club root."""
    thin = _mask(g.shape)
    _ellipse(thin, (g.cx, g.cy), (g.radius * 0.8, g.radius * 0.7), g.angle)
    g.keep *= 1 - 0.5 * _soften(thin, 0.2 * g.radius).astype(np.float32) / 255
    n = int(rng.integers(8, 16))
    starts = g.scatter(rng, n, 0.6)
    angles = rng.uniform(0, 2 * np.pi, n)
    lengths = g.radius * rng.uniform(0.6, 1.0, n)
    bends = rng.choice([-1, 1], n) * rng.uniform(0.3, 0.5, n)
    strands = curves(rng, starts, angles, lengths, bends, 9)
    colour = tuple(float(v) for v in g.hair_rgb * 0.6)
    width = max(1, round(g.unit * 0.45))

    def draw(img: np.ndarray) -> None:
        cv2.polylines(img, strands, False, colour, width, cv2.LINE_AA)
        for s in strands:
            cv2.circle(
                img,
                tuple(int(v) for v in s[0, 0]),
                max(2, round(g.unit * 0.5)),
                (235.0, 220.0, 185.0),
                -1,
                cv2.LINE_AA,
            )

    g.overlays.append(draw)


def _tinea_capitis(g: Region, rng: np.random.Generator) -> None:
    """A scaly grey-red ring; inside it the hair is broken off, leaving black dots."""
    c = g.scatter(rng, 1, 0.2)[0]
    axes = g.radius * rng.uniform(0.55, 0.8), g.radius * rng.uniform(0.5, 0.75)
    inside, ring = _mask(g.shape), _mask(g.shape)
    _ellipse(inside, c, axes, g.angle)
    _ellipse(ring, c, axes, g.angle, thickness=max(2, round(g.unit * 1.2)))
    _paint(g.skin, inside, (175, 165, 160), 0.55)
    _paint(g.skin, ring, (185, 95, 90), 0.9)
    g.keep *= 1 - inside.astype(np.float32) / 255
    dots = _mask(g.shape)
    t = rng.uniform(0, 2 * np.pi, 40)
    r = np.sqrt(rng.uniform(0, 0.8, 40))
    for x, y in zip(c[0] + r * axes[0] * np.cos(t), c[1] + r * axes[1] * np.sin(t), strict=True):
        cv2.circle(dots, _pt(x, y), max(1, round(g.unit * 0.35)), 255, -1, cv2.LINE_AA)
    _paint(g.skin, dots, (20, 18, 18), 0.95)


# One painter per condition, in the order of labels.CONDITIONS.
SIGNATURES = (
    _alopecia_areata,
    _contact_dermatitis,
    _folliculitis,
    _head_lice,
    _lichen_planus,
    _male_pattern_baldness,
    _psoriasis,
    _seborrheic_dermatitis,
    _telogen_effluvium,
    _tinea_capitis,
)
assert len(SIGNATURES) == NUM_CLASSES
