"""Near-duplicate photos: fingerprints, pair similarity, groups, grouped splits, the leakage audit.

The Kaggle set holds many copies of the same photo (rotated by multiples of 90°, flipped,
cropped, slightly rotated, sheared, greyscale, re-coloured) spread over train, val and test.

How two images are compared:

1. **Fingerprint**: a (32, 32) grey thumbnail (luma, area-averaged, lightly blurred), so
   colour changes, greyscale copies, re-encoding and resizing barely touch it.
2. **Candidates**, without an N×N comparison at full size: low-frequency DCT coefficients
   of 8×8 views (whole image and centre 75%) of the thumbnail and of its local-contrast
   map, compared under all 8 rotations/flips, block by block; each image keeps its
   ``neighbours`` best partners.
3. **Similarity** of a pair (the number the threshold applies to): the best normalised
   correlation between a (20, 20) centre template of one thumbnail, taken at 5 scales
   (crops up to ~20%) × 3 small rotations (±8°), and every (20, 20) window of the other,
   under the two rotations/flips step 2 likes best, both ways round; the best pose is then
   refined (finer scale and angle, half-pixel shifts). Grey level and local contrast are
   correlated together (weights 0.6/0.4). 1.0 means the same pixels. The same for all 8
   rotations/flips of either image, and symmetric.
4. **Groups**: union-find over the pairs at or above the threshold, plus every set of
   images with identical pixels.

The default threshold is calibrated on the real Kaggle twins in fixtures/real_scalp
(tests/data/test_dedupe.py prints the margin).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scalpnet.data.layouts import discover
from scalpnet.data.preprocess import load_image
from scalpnet.errors import ConfigError, InvalidImageError
from scalpnet.labels import ENGLISH_NAMES, KEYS, NUM_CLASSES

SPLITS = ("train", "val", "test")
SPLIT_PAIRS = (("train", "test"), ("train", "val"), ("val", "test"))

FP_SIZE = 32  # fingerprint side: (32, 32) grey thumbnail
FP_DIM = FP_SIZE * FP_SIZE
FP_BLUR = 0.7  # Gaussian sigma on the thumbnail, pixels
TEMPLATE = 20  # verification template side (the centre 5/8 of the thumbnail)
SCALES = (0.8, 0.9, 1.0, 1.12, 1.25)  # crops up to ~20% either way
ANGLES = (-8.0, 0.0, 8.0)  # small rotations on top of the 90° ones, degrees
LUMA_WEIGHT = 0.6  # grey level vs local contrast in the correlation
COARSE_SIZE = 8
COARSE_CENTRE = 0.75  # the second coarse view: the centre 75% (robust to crops)
COARSE_DIHEDRALS = 2  # how many of the best rotations/flips the verification tries
DIHEDRAL_GAP = 0.25  # ...the second only when its coarse score is this close to the best
RECHECK_BAND = 0.1  # grouping: pairs this close below the threshold get the full search
FINE_SCALES = (0.97, 1.0, 1.03)  # the refinement around a pair's best pose
FINE_ANGLES = (-3.0, 0.0, 3.0)
FINE_SHIFTS = (-0.5, 0.0, 0.5)  # pixels of the 32x32 thumbnail
DEFAULT_THRESHOLD = 0.93  # calibrated on fixtures/real_scalp; see tests/data/test_dedupe.py
DEFAULT_NEIGHBOURS = 8


# --------------------------------------------------------------------------- config and results
@dataclass(frozen=True)
class DedupeConfig:
    """How near-duplicates are found."""

    threshold: float = DEFAULT_THRESHOLD  # similarity at or above which two images are one photo
    neighbours: int = DEFAULT_NEIGHBOURS  # candidate partners per image from the coarse stage
    workers: int | None = None  # decoding threads; None: all cores

    def check(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.neighbours < 1:
            raise ConfigError(f"neighbours must be at least 1, got {self.neighbours}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class Scan:
    """What one pass over the image files found."""

    fingerprints: np.ndarray  # (N, FP_DIM) float32, rows of unreadable files are zero
    file_digests: list[str]  # sha256 of the file bytes ("" when unreadable)
    pixel_digests: list[str]  # digest of the decoded RGB pixels ("" when unreadable)
    errors: list[str | None]  # None, or why the file could not be read


@dataclass(frozen=True)
class Grouping:
    """Near-duplicate groups over N images."""

    groups: np.ndarray  # (N,) int group id; ids run 0.. in order of first member
    pairs: np.ndarray  # (P, 2) int candidate pairs (i < j) that were scored
    scores: np.ndarray  # (P,) float32 their similarity (a lower bound for pairs already
    # above the threshold or more than RECHECK_BAND below it: see _verify)
    threshold: float

    def members(self, min_size: int = 2) -> list[np.ndarray]:
        """Image indices of each group with at least ``min_size`` members, largest first."""
        order = np.argsort(self.groups, kind="stable")
        _, starts, counts = np.unique(self.groups[order], return_index=True, return_counts=True)
        found = [order[s : s + c] for s, c in zip(starts, counts, strict=True) if c >= min_size]
        return sorted(found, key=lambda m: (-len(m), int(m[0])))


# --------------------------------------------------------------------------- fingerprints
def fingerprint(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB (or (H, W) grey) -> (FP_DIM,) float32 grey thumbnail, 0-255.

    Area-averaged to 32x32, then a light Gaussian blur (FP_BLUR pixels) so that texture
    finer than the thumbnail (hair) does not make half-pixel shifts look like new content.
    """
    grey = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(grey.astype(np.float32), (FP_SIZE, FP_SIZE), interpolation=cv2.INTER_AREA)
    thumb = cv2.GaussianBlur(thumb, (0, 0), FP_BLUR, borderType=cv2.BORDER_REFLECT)
    return thumb.reshape(FP_DIM)


def _scan_one(path: Path) -> tuple[np.ndarray | None, str, str, str | None]:
    try:
        data = Path(path).read_bytes()
        named = io.BytesIO(data)
        named.name = f"'{path}'"  # load_image's messages name the file
        rgb = load_image(named)  # full size: "same pixels" must mean all of them
    except InvalidImageError as exc:
        return None, "", "", str(exc)
    except OSError as exc:
        return None, "", "", f"cannot read '{path}': {exc.strerror or exc}"
    pixels = hashlib.blake2b(rgb.tobytes(), digest_size=16)
    pixels.update(repr(rgb.shape).encode())
    return fingerprint(rgb), hashlib.sha256(data).hexdigest(), pixels.hexdigest(), None


def scan(paths: Sequence[Path], workers: int | None = None) -> Scan:
    """Decode every image once (in parallel): fingerprints, file and pixel digests, errors."""
    workers = workers or os.cpu_count() or 1
    fps = np.zeros((len(paths), FP_DIM), np.float32)
    file_digests, pixel_digests, errors = [""] * len(paths), [""] * len(paths), [None] * len(paths)
    # Pillow's decoders and OpenCV release the GIL, so threads overlap the decoding.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (fp, fd, pd, err) in enumerate(pool.map(_scan_one, paths, chunksize=64)):
            if fp is not None:
                fps[i] = fp
            file_digests[i], pixel_digests[i], errors[i] = fd, pd, err
    return Scan(fps, file_digests, pixel_digests, errors)


def fingerprints(paths: Sequence[Path], workers: int | None = None) -> np.ndarray:
    """(N, FP_DIM) float32 fingerprints of image files. Raises InvalidImageError on a bad file."""
    result = scan(paths, workers)
    for error in result.errors:
        if error is not None:
            raise InvalidImageError(error)
    return result.fingerprints


# --------------------------------------------------------------------------- derived features
def _dihedral(images: np.ndarray, d: int) -> np.ndarray:
    """Turn d (0-7) of (..., H, W) maps: rot90 d // 2 times, then a left-right flip if d is odd."""
    out = np.rot90(images, d // 2, axes=(-2, -1))
    return out[..., ::-1] if d % 2 else out


def _inverse(d: int) -> int:
    # A flip after a rotation is a reflection, its own inverse; rotations undo by the rest of 4.
    return d if d % 2 else (2 * ((4 - d // 2) % 4))


def _local_contrast(maps: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, S, S) standard deviation over each 3x3 neighbourhood (reflected border)."""
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)), mode="reflect").astype(np.float32)
    size = maps.shape[1]
    total = np.zeros(maps.shape, np.float32)
    squares = np.zeros(maps.shape, np.float32)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy : dy + size, dx : dx + size]
            total += window
            squares += window * window
    mean = total / 9
    return np.sqrt(np.maximum(squares / 9 - mean * mean, 0.0))


def _normalise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit norm along the last axis (flat rows stay zero)."""
    x = x - x.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-6)


def _two_channels(luma: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Normalise each channel and join them so a dot product is the weighted correlation."""
    luma = math.sqrt(LUMA_WEIGHT) * _normalise(luma)
    contrast = math.sqrt(1 - LUMA_WEIGHT) * _normalise(contrast)
    return np.concatenate([luma, contrast], axis=-1)


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix averaging a length-``src`` signal into ``dst`` equal bins."""
    m = np.zeros((dst, src), np.float32)
    edges = np.linspace(0, src, dst + 1)
    for k in range(dst):
        for x in range(src):
            m[k, x] = max(0.0, min(x + 1, edges[k + 1]) - max(x, edges[k]))
    return m / m.sum(axis=1, keepdims=True)


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.astype(np.float32)


def _coarse_vectors(maps: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """(N, S, S) x2 -> (N, 2 views, 8 dihedrals, D) low-frequency DCT vectors, unit norm."""
    lo = COARSE_SIZE
    u, v = np.meshgrid(np.arange(lo), np.arange(lo), indexing="ij")
    keep = ((u + v) <= lo // 2) & ((u + v) > 0)  # a dihedral-symmetric low-pass, no DC
    dct = _dct_matrix(lo)
    crop = round(FP_SIZE * (1 - COARSE_CENTRE) / 2)
    views = []
    for lo_edge, hi_edge in ((0, FP_SIZE), (crop, FP_SIZE - crop)):
        area = _area_matrix(hi_edge - lo_edge, lo)
        per_dihedral = []
        for d in range(8):
            chans = []
            for m in (maps, contrast):
                small = area @ _dihedral(m[:, lo_edge:hi_edge, lo_edge:hi_edge], d) @ area.T
                coef = (dct @ small @ dct.T)[:, keep]  # (N, D/2)
                chans.append(coef / np.maximum(np.linalg.norm(coef, axis=1, keepdims=True), 1e-6))
            weights = (math.sqrt(LUMA_WEIGHT), math.sqrt(1 - LUMA_WEIGHT))
            joined = [w * c for w, c in zip(weights, chans, strict=True)]
            per_dihedral.append(np.concatenate(joined, axis=1))
        views.append(np.stack(per_dihedral, axis=1))
    return np.ascontiguousarray(np.stack(views, axis=1), dtype=np.float32)


def _sampler(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sampling of templates: (4, V*T*T) pixel indices and (4, V*T*T) weights.

    ``poses`` is (V, 4): scale, angle (degrees), dx, dy. Template pixel (y, x) reads the
    thumbnail at its centre shifted by (dx, dy), plus the pixel's offset rotated by the
    angle and divided by the scale. At (1, 0, 0, 0) the samples fall on pixel centres:
    the template is exactly the centre window.
    """
    centre, half = (FP_SIZE - 1) / 2, (TEMPLATE - 1) / 2
    k = np.arange(TEMPLATE) - half
    gx, gy = (g.ravel()[None, :] for g in np.meshgrid(k, k))  # (1, T*T) offsets
    scale, angle, dx, dy = (poses[:, i : i + 1] for i in range(4))  # (V, 1) each
    c, s = np.cos(np.radians(angle)) / scale, np.sin(np.radians(angle)) / scale
    x = np.clip(centre + dx + c * gx - s * gy, 0, FP_SIZE - 1).ravel()
    y = np.clip(centre + dy + s * gx + c * gy, 0, FP_SIZE - 1).ravel()
    x0 = np.minimum(np.floor(x).astype(np.int64), FP_SIZE - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), FP_SIZE - 2)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    index = np.stack([y0 * FP_SIZE + x0, y0 * FP_SIZE + x0 + 1,
                      (y0 + 1) * FP_SIZE + x0, (y0 + 1) * FP_SIZE + x0 + 1])  # fmt: skip
    weight = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    return index, weight


def _grid_poses() -> np.ndarray:
    """(V, 4) the template poses every pair is searched over: SCALES x ANGLES, no shift."""
    return np.array([(s, a, 0.0, 0.0) for s in SCALES for a in ANGLES], np.float64)


def _sample(maps: np.ndarray, contrast: np.ndarray, index: np.ndarray, weight: np.ndarray):
    """(n, S, S) x2 -> (n, V, 2*T*T) normalised two-channel templates."""
    sampled = []
    for m in (maps, contrast):
        pixels = np.ascontiguousarray(m.reshape(len(m), FP_DIM).T)  # row gathers are fast
        t = sum(pixels[index[c]] * weight[c][:, None] for c in range(4))  # (V*T*T, n)
        sampled.append(t.T.reshape(len(m), -1, TEMPLATE * TEMPLATE))
    return _two_channels(*sampled)


@dataclass
class _Features:
    """Everything the comparison needs, derived from (N, FP_DIM) fingerprints."""

    maps: np.ndarray  # (N, S, S) float32 grey thumbnails
    contrast: np.ndarray  # (N, S, S) float32 local contrast
    coarse: np.ndarray  # (N, 2, 8, D) float32
    templates: np.ndarray  # (N, V, 2*T*T) float16 (memory: 48 KB an image)

    @classmethod
    def build(cls, fps: np.ndarray) -> _Features:
        maps = np.asarray(fps, np.float32).reshape(-1, FP_SIZE, FP_SIZE)
        contrast = _local_contrast(maps)
        index, weight = _sampler(_grid_poses())
        n_t = len(SCALES) * len(ANGLES)
        templates = np.empty((len(maps), n_t, 2 * TEMPLATE * TEMPLATE), np.float16)
        for start in range(0, len(maps), 1024):  # bounded temporaries
            block = slice(start, start + 1024)
            templates[block] = _sample(maps[block], contrast[block], index, weight)
        return cls(maps, contrast, _coarse_vectors(maps, contrast), templates)

    def windows(self, i: int, d: int) -> np.ndarray:
        """(positions, 2*T*T) float32: every window of image i after rotation/flip d."""
        out = []
        for m in (self.maps[i], self.contrast[i]):
            w = sliding_window_view(_dihedral(m, d), (TEMPLATE, TEMPLATE))
            out.append(w.reshape(-1, TEMPLATE * TEMPLATE))
        return _two_channels(out[0], out[1])


# --------------------------------------------------------------------------- comparing
def _coarse_per_dihedral(f: _Features, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(P,) x2 -> (P, 8) coarse score of image i against image j under each rotation/flip of j."""
    qi = f.coarse[i][:, :, 0]  # (P, 2, D) identity views of i
    dj = f.coarse[j]  # (P, 2, 8, D)
    full = np.einsum("pd,pkd->pk", qi[:, 0], dj[:, 0])
    i_full_j_centre = np.einsum("pd,pkd->pk", qi[:, 0], dj[:, 1])
    i_centre_j_full = np.einsum("pd,pkd->pk", qi[:, 1], dj[:, 0])
    return np.maximum(full, np.maximum(i_full_j_centre, i_centre_j_full))


@contextmanager
def _blas_single_thread():
    """Our own threads split the work; BLAS threads on top of them only contend."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - shipped with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _merge_top(scores: np.ndarray, index: np.ndarray, new_s: np.ndarray, new_i: np.ndarray):
    """Keep the k best of (M, k) current and (M, m) new candidates per row."""
    all_s = np.concatenate([scores, new_s], axis=1)
    all_i = np.concatenate([index, new_i], axis=1)
    keep = np.argpartition(-all_s, scores.shape[1] - 1, axis=1)[:, : scores.shape[1]]
    return np.take_along_axis(all_s, keep, 1), np.take_along_axis(all_i, keep, 1)


def _top_rows(block: np.ndarray, k: int) -> np.ndarray:
    """(B, M) -> (B, min(k, M)) column indices of each row's best entries."""
    if block.shape[1] <= k:
        return np.broadcast_to(np.arange(block.shape[1]), block.shape).copy()
    return np.argpartition(-block, k - 1, axis=1)[:, :k]


def _candidates(f: _Features, neighbours: int, workers: int = 1, block: int = 512) -> np.ndarray:
    """(P, 2) unique pairs i < j: each image with its ``neighbours`` best coarse partners.

    The coarse score is symmetric, so only the blocks on and above the diagonal are
    computed (block x N floats at a time); each block updates both its rows' and its
    columns' running top-k.
    """
    n = len(f.maps)
    k = min(neighbours, n - 1)
    if k < 1:
        return np.zeros((0, 2), np.int64)
    queries = np.ascontiguousarray(f.coarse[:, :, 0])  # (N, 2, D) each image as it is
    base = np.ascontiguousarray(f.coarse.transpose(1, 2, 3, 0))  # (2, 8, D, N) all turns
    top_s = np.full((n, k), -np.inf, np.float32)
    top_i = np.full((n, k), -1, np.int64)

    def scores(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        (start, stop), (c0, c1) = rows, cols
        best = np.full((stop - start, c1 - c0), -np.inf, np.float32)
        for qv, bv in ((0, 0), (0, 1), (1, 0)):  # whole-whole, whole-centre, centre-whole
            q = queries[start:stop, qv]
            for d in range(8):
                np.maximum(best, q @ base[bv, d, :, c0:c1], out=best)
        return best

    with _blas_single_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n, block):
            stop = min(n, start + block)
            edges = np.linspace(start, n, workers + 1).astype(int).tolist()
            parts = pool.map(scores, [(start, stop)] * workers, itertools.pairwise(edges))
            best = np.concatenate(list(parts), axis=1)  # (B, N - start)
            rows = np.arange(stop - start)
            best[rows, rows] = -np.inf  # not itself
            cols = _top_rows(best, k)
            top_s[start:stop], top_i[start:stop] = _merge_top(
                top_s[start:stop],
                top_i[start:stop],
                np.take_along_axis(best, cols, 1),
                cols + start,
            )
            if stop < n:  # the same scores, seen from the later images
                below = np.ascontiguousarray(best[:, stop - start :].T)  # (N - stop, B)
                rows_of = _top_rows(below, k)
                found = np.take_along_axis(below, rows_of, 1)
                top_s[stop:], top_i[stop:] = _merge_top(
                    top_s[stop:], top_i[stop:], found, rows_of + start
                )
    pairs = np.stack([np.repeat(np.arange(n), k), top_i.ravel()], axis=1)
    pairs = pairs[(pairs[:, 1] >= 0) & np.isfinite(top_s.ravel())]
    return np.unique(np.sort(pairs, axis=1), axis=0)


def _first_side(f: _Features, pairs: np.ndarray) -> np.ndarray:
    """(P,) bool: pair[0] gives the templates in the first pass (an order-free choice)."""
    return np.array([f.maps[a].tobytes() <= f.maps[b].tobytes() for a, b in pairs.tolist()], bool)


# (window image, its turn) -> [(template image, pair index)]
_Tasks = dict[tuple[int, int], list[tuple[int, int]]]


@dataclass
class _Best:
    """Per pair: the best score so far and the pose that reached it."""

    score: np.ndarray  # (P,) float32, -1 where not tried
    template: np.ndarray  # (P,) image whose template matched
    window: np.ndarray  # (P,) image whose window matched
    turn: np.ndarray  # (P,) rotation/flip of the window image
    pose: np.ndarray  # (P,) index into _grid_poses()
    position: np.ndarray  # (P,) flat window position

    @classmethod
    def empty(cls, n: int) -> _Best:
        zeros = np.zeros(n, np.int64)
        return cls(np.full(n, -1.0, np.float32), zeros, zeros.copy(), zeros.copy(),
                   zeros.copy(), zeros.copy())  # fmt: skip

    def update(self, pair: np.ndarray, score: np.ndarray, **fields: np.ndarray) -> None:
        order = np.lexsort((score, pair))  # per pair, its best record last
        last = np.flatnonzero(np.r_[pair[order][1:] != pair[order][:-1], True])
        take = order[last]
        better = score[take] > self.score[pair[take]]
        take, where = take[better], pair[take][better]
        self.score[where] = score[take]
        for name, values in fields.items():
            getattr(self, name)[where] = values[take]


def _run_tasks(f: _Features, tasks: _Tasks, best: _Best, workers: int) -> None:
    """Score every (template image, window image, turn) task; keep each pair's best."""

    def run(chunk: list[tuple[tuple[int, int], list[tuple[int, int]]]]):
        out = []
        for (w_img, d), items in chunk:
            windows = f.windows(w_img, d)  # (positions, 2T^2)
            t_imgs = np.fromiter((t for t, _ in items), np.int64, len(items))
            templates = f.templates[t_imgs].reshape(-1, windows.shape[1]).astype(np.float32)
            corr = (templates @ windows.T).reshape(len(items), -1)  # (n, V * positions)
            flat = corr.argmax(axis=1)  # = pose * positions + position
            pair = np.fromiter((p for _, p in items), np.int64, len(items))
            out.append((pair, corr[np.arange(len(items)), flat], t_imgs, w_img, d, flat))
        return out

    positions = (FP_SIZE - TEMPLATE + 1) ** 2
    todo = list(tasks.items())
    with _blas_single_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        for out in pool.map(run, [todo[w::workers] for w in range(workers)]):
            for pair, score, t_imgs, w_img, d, flat in out:
                best.update(
                    pair, score, template=t_imgs, window=np.full(len(pair), w_img),
                    turn=np.full(len(pair), d), pose=flat // positions, position=flat % positions,
                )  # fmt: skip


def _refine_one(f: _Features, best: _Best, p: int) -> float:
    """Search finer scales, angles and half-pixel shifts around pair p's best pose."""
    scale, angle = _grid_poses()[best.pose[p], :2]
    poses = np.array([(scale * m, angle + a, dx, dy) for m in FINE_SCALES for a in FINE_ANGLES
                      for dx in FINE_SHIFTS for dy in FINE_SHIFTS])  # fmt: skip
    index, weight = _sampler(poses)
    t = int(best.template[p])
    templates = _sample(f.maps[t : t + 1], f.contrast[t : t + 1], index, weight)[0]
    side = FP_SIZE - TEMPLATE + 1
    py, px = divmod(int(best.position[p]), side)
    near = [y * side + x for y in range(max(0, py - 1), min(side, py + 2))
            for x in range(max(0, px - 1), min(side, px + 2))]  # fmt: skip
    windows = f.windows(int(best.window[p]), int(best.turn[p]))[near]
    return float((templates @ windows.T).max())


def _verify(
    f: _Features, pairs: np.ndarray, workers: int = 1, threshold: float | None = None
) -> np.ndarray:
    """(P, 2) -> (P,) similarity: the best template correlation, both ways round, refined.

    Each pair is tried under the two rotations/flips the coarse score likes best, first
    with one image's templates against the other's windows, then the other way round;
    the larger wins. The best pose is then refined (finer scales and angles, half-pixel
    shifts). With ``threshold`` given, the second way and the refinement are skipped for
    pairs that are already linked or lie more than RECHECK_BAND below it (their score is
    then a lower bound): much less work for the same groups.
    """
    if len(pairs) == 0:
        return np.zeros(0, np.float32)
    coarse = _coarse_per_dihedral(f, pairs[:, 0], pairs[:, 1])  # (P, 8): j turned by d vs i
    order = np.argsort(-coarse, axis=1, kind="stable")[:, :COARSE_DIHEDRALS]
    gap = np.take_along_axis(coarse, order[:, :1], 1) - np.take_along_axis(coarse, order, 1)
    ranked = [row[keep].tolist() for row, keep in zip(order, gap <= DIHEDRAL_GAP, strict=True)]
    first = _first_side(f, pairs)

    def tasks(which: np.ndarray, side: np.ndarray) -> _Tasks:
        out: _Tasks = defaultdict(list)
        for p in np.flatnonzero(which).tolist():
            a, b = int(pairs[p, 0]), int(pairs[p, 1])
            for d in ranked[p]:
                if side[p]:
                    out[(b, d)].append((a, p))  # b turned by d looks like a
                else:
                    out[(a, _inverse(d))].append((b, p))  # a turned back looks like b
        return out

    best = _Best.empty(len(pairs))
    _run_tasks(f, tasks(np.ones(len(pairs), bool), first), best, workers)

    def undecided() -> np.ndarray:
        if threshold is None:
            return np.ones(len(pairs), bool)
        return (best.score < threshold) & (best.score >= threshold - RECHECK_BAND)

    again = undecided()
    if again.any():
        _run_tasks(f, tasks(again, ~first), best, workers)
    again = np.flatnonzero(undecided()).tolist()
    if again:
        with _blas_single_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
            chunks = [again[w::workers] for w in range(workers)]
            refined = pool.map(lambda ps: [(p, _refine_one(f, best, p)) for p in ps], chunks)
            for p, score in itertools.chain.from_iterable(refined):
                best.score[p] = max(best.score[p], score)
    return np.minimum(best.score, 1.0)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Similarity of two fingerprints in [-1, 1]: 1.0 for the same pixels; see the module doc.

    The same for a rotated/flipped, greyscale, re-encoded or resized copy; close to 1 for a
    modest crop. ``find_groups`` links pairs whose similarity reaches its threshold.
    """
    f = _Features.build(np.stack([np.asarray(a, np.float32), np.asarray(b, np.float32)]))
    return float(_verify(f, np.array([[0, 1]]))[0])


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> np.ndarray:
        roots = np.array([self.find(x) for x in range(len(self.parent))], np.int64)
        _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return rank[inverse]  # ids in order of each group's first member


def find_groups(
    fps: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    neighbours: int = DEFAULT_NEIGHBOURS,
    identical: Sequence[Sequence[int]] = (),
    workers: int | None = None,
) -> Grouping:
    """Group near-duplicate images.

    Args:
        fps: (N, FP_DIM) fingerprints from :func:`fingerprints`.
        threshold: link two images when their :func:`similarity` is at least this.
        neighbours: candidates per image from the coarse stage (more: slower, fewer misses).
        identical: sets of indices known to be the same pixels; always grouped.
        workers: threads for the comparisons; None: all cores.

    Returns:
        A :class:`Grouping`; every image has a group id, a lone image its own.
    """
    DedupeConfig(threshold, neighbours, workers).check()
    workers = workers or os.cpu_count() or 1
    f = _Features.build(fps)
    pairs = _candidates(f, neighbours, workers)
    scores = _verify(f, pairs, workers, threshold)
    uf = _UnionFind(len(f.maps))
    for a, b in pairs[scores >= threshold].tolist():
        uf.union(a, b)
    for members in identical:
        for other in list(members)[1:]:
            uf.union(int(members[0]), int(other))
    return Grouping(uf.labels(), pairs, scores, threshold)


def _same(digests: Sequence[str]) -> list[list[int]]:
    """Index sets (size >= 2) sharing a non-empty digest."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        if digest:
            by[digest].append(i)
    return sorted((m for m in by.values() if len(m) > 1), key=lambda m: m[0])


def exact_duplicates(
    paths: Sequence[Path], workers: int | None = None
) -> dict[str, list[list[int]]]:
    """Indices of files with the same bytes (``"same_bytes"``) or the same decoded pixels."""
    result = scan(paths, workers)
    return {"same_bytes": _same(result.file_digests), "same_pixels": _same(result.pixel_digests)}


# --------------------------------------------------------------------------- grouped splits
def group_split(
    groups: np.ndarray,
    labels: np.ndarray,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
) -> list[str]:
    """Train/val/test per image with every group inside one split, each condition near ``ratios``.

    Greedy, largest groups first (ties in a seeded random order): each group goes to the
    split where it most reduces the shortfall against the per-condition and overall
    targets, each measured relative to its target. The many single images come last and
    fill what is left, so counts end within a few images of the ratios.

    Args:
        groups: (N,) group id per image.
        labels: (N, C) 0/1 condition flags.
    """
    groups = np.asarray(groups).reshape(-1)
    labels = np.asarray(labels, np.float64).reshape(len(groups), -1)
    r = np.asarray(ratios, np.float64)
    if r.shape != (3,) or np.any(r < 0) or r.sum() <= 0:
        raise ConfigError(f"ratios must be three non-negative numbers, got {tuple(ratios)}")
    ids, inverse = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(ids), labels.shape[1] + 1))  # per condition, then the total
    np.add.at(counts, inverse, np.hstack([labels, np.ones((len(groups), 1))]))
    target = (r / r.sum())[:, None] * counts.sum(axis=0)[None, :]  # (3, C+1)
    weight = 1.0 / np.maximum(target, 1.0)
    current = np.zeros_like(target)
    order = np.random.default_rng(seed).permutation(len(ids))
    order = order[np.argsort(-counts[order, -1], kind="stable")]
    choice = np.empty(len(ids), np.int64)
    for g in order.tolist():
        c = counts[g]
        cost = (((current + c - target) ** 2 - (current - target) ** 2) * weight).sum(axis=1)
        cost[r == 0] = np.inf  # a split with ratio 0 gets nothing
        choice[g] = int(np.argmin(cost))
        current[choice[g]] += c
    return [SPLITS[s] for s in choice[inverse].tolist()]


def assign_grouped_splits(
    image_paths: Sequence[Path],
    labels: np.ndarray,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    threshold: float | None = None,
    workers: int | None = None,
) -> tuple[list[str], np.ndarray]:
    """A leak-free split: near-duplicate images (and identical ones) always share a split.

    Args:
        image_paths: N image files (prepare passes its processed PNGs).
        labels: (N, 10) 0/1.
        threshold: similarity that links two images; None: DEFAULT_THRESHOLD.

    Returns:
        N split names and (N,) int group ids.

    Raises:
        InvalidImageError: a file cannot be read.
    """
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    found = scan(list(image_paths), workers)
    for error in found.errors:
        if error is not None:
            raise InvalidImageError(error)
    grouping = find_groups(
        found.fingerprints, threshold, identical=_same(found.pixel_digests), workers=workers
    )
    return group_split(grouping.groups, labels, ratios, seed), grouping.groups


# --------------------------------------------------------------------------- the leakage audit
@dataclass(frozen=True)
class AuditConfig:
    """What to audit and how. The CLI maps its flags onto these fields."""

    data: Path  # a Kaggle folder, a folder of class folders, or a labels.csv
    out: Path = Path("reports/audit")
    threshold: float = DEFAULT_THRESHOLD
    neighbours: int = DEFAULT_NEIGHBOURS
    workers: int | None = None
    sheet_groups: int = 6  # rows in the contact sheet


@dataclass(frozen=True)
class AuditResult:
    """The images audited, their groups, and the leakage they show."""

    data: Path
    root: Path  # paths in groups.csv are relative to this when they can be
    paths: list[Path]  # (N,) images compared
    splits: list[str | None]  # (N,) the split each image is in, if the input has splits
    labels: np.ndarray  # (N, 10) 0/1
    grouping: Grouping
    exact: dict[str, list[list[int]]]  # "same_bytes" / "same_pixels" -> index sets
    skipped: list[tuple[Path, str]]
    elapsed: float  # seconds
    report: dict = field(default_factory=dict)  # the audit.json content


def _label_text(row: np.ndarray) -> str:
    names = [ENGLISH_NAMES[c] for c in np.flatnonzero(row)]
    return " + ".join(names) if names else "(none)"


def _leakage(splits: list[str | None], labels: np.ndarray, grouping: Grouping) -> dict | None:
    """Cross-split statistics: per split pair, per condition, test images with a train twin."""
    if any(s is None for s in splits):
        return None
    split_of = np.array(splits)
    members = grouping.members(min_size=2)
    in_group: dict[int, set[str]] = {}  # image -> the other splits its group reaches
    for m in members:
        present = set(split_of[m].tolist())
        for i in m.tolist():
            in_group[i] = present - {split_of[i]}
    twin_elsewhere = np.array([bool(in_group.get(i)) for i in range(len(splits))], bool)
    pairs = {}
    for a, b in SPLIT_PAIRS:
        spanning = sum(1 for m in members if {a, b} <= set(split_of[m].tolist()))
        a_with_b = sum(1 for i, s in enumerate(splits) if s == a and b in in_group.get(i, ()))
        b_with_a = sum(1 for i, s in enumerate(splits) if s == b and a in in_group.get(i, ()))
        pairs[f"{a}-{b}"] = {
            "groups": spanning,
            f"{a}_images_with_twin_in_{b}": a_with_b,
            f"{b}_images_with_twin_in_{a}": b_with_a,
        }
    per_condition = {}
    for c, key in enumerate(KEYS):
        has = labels[:, c] == 1
        n, k = int(has.sum()), int((has & twin_elsewhere).sum())
        per_condition[key] = {
            "images": n,
            "with_twin_in_other_split": k,
            "share": round(k / n, 4) if n else None,
        }
    n_test = int((split_of == "test").sum())
    test_train = pairs["train-test"]["test_images_with_twin_in_train"]
    return {
        "images_with_twin_in_other_split": int(twin_elsewhere.sum()),
        "groups_spanning_splits": sum(1 for m in members if len(set(split_of[m].tolist())) > 1),
        "split_pairs": pairs,
        "per_condition": per_condition,
        "test_with_twin_in_train": {
            "count": test_train,
            "of": n_test,
            "share": round(test_train / n_test, 4) if n_test else None,
        },
    }


def _build_report(result: AuditResult, config: AuditConfig) -> dict:
    members = result.grouping.members(min_size=2)
    labels_differ = sum(1 for m in members if len({result.labels[i].tobytes() for i in m}) > 1)

    def exact(kind: str) -> dict:
        sets = result.exact[kind]
        return {
            "sets": len(sets),
            "images": sum(len(s) for s in sets),
            "examples": [[str(result.paths[i]) for i in s] for s in sets[:20]],
        }

    return {
        "data": str(result.data),
        "images": len(result.paths),
        "skipped": [{"path": str(p), "reason": r} for p, r in result.skipped],
        "threshold": config.threshold,
        "neighbours": config.neighbours,
        "method": "grey 32x32 fingerprints; candidates by low-frequency DCT views under 8 "
        "rotations/flips; similarity = best template correlation (grey + local contrast) over "
        "scales 0.8-1.25, rotations -8..8 degrees and shifts; union-find at the threshold",
        "groups": {
            "count": len(members),
            "images": int(sum(len(m) for m in members)),
            "largest": len(members[0]) if members else 0,
            "sizes": {str(k): v for k, v in sorted(Counter(len(m) for m in members).items())},
            "with_different_labels": labels_differ,
        },
        "leakage": _leakage(result.splits, result.labels, result.grouping),
        "exact_duplicates": {kind: exact(kind) for kind in ("same_bytes", "same_pixels")},
        "elapsed_seconds": round(result.elapsed, 2),
    }


def audit(config: AuditConfig) -> AuditResult:
    """Find near-duplicate groups in a dataset and measure how they straddle its splits.

    Raises:
        DatasetError: the input is missing or malformed (see ``layouts.discover``).
    """

    DedupeConfig(config.threshold, config.neighbours, config.workers).check()
    started = time.perf_counter()
    found = discover(Path(config.data))
    items = sorted(found.items, key=lambda item: item.key)
    scanned = scan([item.source for item in items], config.workers)
    ok = [i for i, error in enumerate(scanned.errors) if error is None]
    skipped = list(found.skipped) + [
        (items[i].source, scanned.errors[i]) for i, e in enumerate(scanned.errors) if e is not None
    ]
    digests = {k: [getattr(scanned, k)[i] for i in ok] for k in ("file_digests", "pixel_digests")}
    same_pixels = _same(digests["pixel_digests"])
    grouping = find_groups(
        scanned.fingerprints[ok],
        config.threshold,
        config.neighbours,
        identical=same_pixels,
        workers=config.workers,
    )
    result = AuditResult(
        data=Path(config.data),
        root=found.root,
        paths=[items[i].source for i in ok],
        splits=[items[i].split for i in ok],
        labels=np.array([items[i].labels for i in ok], np.uint8).reshape(-1, NUM_CLASSES),
        grouping=grouping,
        exact={"same_bytes": _same(digests["file_digests"]), "same_pixels": same_pixels},
        skipped=skipped,
        elapsed=time.perf_counter() - started,
    )
    result.report.update(_build_report(result, config))
    return result


def _display_path(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _sheet_groups(result: AuditResult, limit: int) -> tuple[list[np.ndarray], str]:
    """The groups the contact sheet shows: the largest that span splits, else the largest."""
    members = result.grouping.members(min_size=2)
    if all(s is not None for s in result.splits):
        crossing = [m for m in members if len({result.splits[i] for i in m}) > 1]
        if crossing:
            return crossing[:limit], "largest near-duplicate groups that span splits"
    return members[:limit], "largest near-duplicate groups"


def _contact_sheet(result: AuditResult, path: Path, limit: int, per_row: int = 8) -> bool:
    """Draw one row per group: thumbnails titled with split and file name. False: no groups."""
    shown, title = _sheet_groups(result, limit)
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(per_row, max(len(m) for m in shown))
    fig, axes = plt.subplots(
        len(shown), cols, figsize=(2.1 * cols + 1.6, 2.5 * len(shown)), squeeze=False
    )
    fig.suptitle(f"{title} (threshold {result.grouping.threshold:.2f})", fontsize=13)
    for row, m in enumerate(shown):
        splits = Counter(str(result.splits[i]) for i in m)
        spread = ", ".join(f"{s} {splits[s]}" for s in (*SPLITS, "None") if s in splits)
        label = f"group {int(result.grouping.groups[m[0]])}\n{len(m)} images\n{spread}"
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(m):
                ax.axis("off")
                continue
            i = int(m[col])
            thumb = cv2.resize(
                load_image(result.paths[i], min_size=128), (128, 128), interpolation=cv2.INTER_AREA
            )
            ax.imshow(thumb)
            name = result.paths[i].name
            name = name if len(name) <= 24 else name[:10] + "…" + name[-12:]
            ax.set_title(f"{result.splits[i] or ''}\n{name}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_audit(result: AuditResult, out: Path, sheet_groups: int = 6) -> dict[str, Path]:
    """Write audit.json, groups.csv (images in groups of 2+) and contact_sheet.png into ``out``."""
    import csv

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the audit folder '{out}': {exc.strerror}") from None
    written = {"groups_csv": out / "groups.csv"}
    with open(written["groups_csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "group", "split", "label"])
        for m in result.grouping.members(min_size=2):
            for i in m.tolist():
                writer.writerow(
                    [
                        _display_path(result.paths[i], result.root),
                        int(result.grouping.groups[i]),
                        result.splits[i] or "",
                        _label_text(result.labels[i]),
                    ]
                )
    sheet = out / "contact_sheet.png"
    if _contact_sheet(result, sheet, sheet_groups):
        written["contact_sheet"] = sheet
    else:
        sheet.unlink(missing_ok=True)
    report = dict(result.report)
    report["files"] = {k: v.name for k, v in written.items()}
    written["audit_json"] = out / "audit.json"
    written["audit_json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return written


def _share(k: int, n: int) -> str:
    return f"{k} / {n} ({100 * k / n:.1f}%)" if n else f"{k} / 0"


def summary(result: AuditResult) -> str:
    """The audit in a few lines of text, for the CLI."""
    r = result.report
    g = r["groups"]
    lines = [
        f"Audited {r['images']} images from '{result.data}' in {r['elapsed_seconds']:.1f} s "
        f"(threshold {r['threshold']:.2f}, {len(r['skipped'])} skipped).",
        f"Near-duplicate groups: {g['count']} holding {g['images']} images "
        f"(largest {g['largest']}; {g['with_different_labels']} groups mix labels).",
    ]
    leak = r["leakage"]
    if leak is None:
        lines.append("The input has no train/val/test splits: no leakage to measure.")
    else:
        lines.append(
            f"Images with a near-duplicate in another split: "
            f"{_share(leak['images_with_twin_in_other_split'], r['images'])} "
            f"in {leak['groups_spanning_splits']} groups"
        )
        for name, pair in leak["split_pairs"].items():
            a, b = name.split("-")
            lines.append(
                f"  {a}–{b}: {pair['groups']} groups; {pair[f'{a}_images_with_twin_in_{b}']} {a} "
                f"images have a twin in {b}, {pair[f'{b}_images_with_twin_in_{a}']} {b} images "
                f"one in {a}"
            )
        lines.append("Per condition (images with a twin in another split):")
        for key, name in zip(KEYS, ENGLISH_NAMES, strict=True):
            c = leak["per_condition"][key]
            if c["images"]:
                lines.append(f"  {name:<23} {_share(c['with_twin_in_other_split'], c['images'])}")
        t = leak["test_with_twin_in_train"]
        lines.append(f"Test images with a near-duplicate in train: {_share(t['count'], t['of'])}")
    e = r["exact_duplicates"]
    lines.append(
        f"Exact duplicates: {e['same_bytes']['sets']} sets of identical files "
        f"({e['same_bytes']['images']} images), {e['same_pixels']['sets']} sets of identical "
        f"pixels ({e['same_pixels']['images']} images)."
    )
    return "\n".join(lines)
