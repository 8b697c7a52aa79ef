"""Candidate pairs: which of the N(N-1)/2 pairs are worth a geometric verification.

Verifying every pair of the Kaggle set (72 million) is out of reach, so each image keeps
``neighbours`` best partners under each of two cheap scores, and their union is verified:

1. **Coarse views** of the (32, 32) fingerprints: low-frequency DCT coefficients of 8x8
   views (``COARSE_VIEWS``: the whole thumbnail, its centre 75% as it is and turned by 30
   degrees, its centre half turned by 15 and by 45 degrees) of each thumbnail and of its
   local-contrast map (grey 0.6, contrast 0.4), compared under all 8 rotations/flips,
   block by block: finds turned, flipped, recoloured, lightly cropped copies, and some
   copies turned by any angle and cropped to their inner square.
2. **Visual words** (``keypoints.word_vectors``): cosine of sparse SIFT word histograms,
   as seen or mirrored: finds rotations by any angle, crops, zoom and shear that change
   the coarse views too much.

Neither score says "same photo" (at 32x32 different photos of skin can look alike); only
``verify.py`` does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np
from scipy import sparse

from scalpnet.data.fingerprints import FP_SIZE
from scalpnet.data.threads import one_thread_per_worker

LUMA_WEIGHT = 0.6  # grey level vs local contrast in the correlation
COARSE_SIZE = 8
# Coarse views: (side of the centre square kept, as a fraction of the thumbnail's; turned
# by this many degrees about the centre)
COARSE_VIEWS = (
    (1.0, 0.0),  # 0: the whole thumbnail
    (0.75, 0.0),  # 1: its centre (robust to crops)
    (0.75, 30.0),  # 2: that centre turned
    (0.5, 15.0),  # 3, 4: the centre half turned: what a copy turned by such an angle and
    (0.5, 45.0),  # cropped to its inner square shows of its photo, whole
)
# (query view, candidate view) compared: whole-whole, whole-centre, centre-whole, the
# centre against the turned centre, and the whole against the turned centre halves, each
# both ways (symmetric, so each block serves both sides)
COARSE_COMBINATIONS = ((0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (0, 3), (3, 0), (0, 4), (4, 0))


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


def _turned(maps: np.ndarray, angle: float) -> np.ndarray:
    """(N, S, S) maps rotated by ``angle`` degrees about their centre (reflected border)."""
    m = cv2.getRotationMatrix2D(((FP_SIZE - 1) / 2, (FP_SIZE - 1) / 2), angle, 1.0)
    size = (FP_SIZE, FP_SIZE)
    return np.stack([cv2.warpAffine(x, m, size, borderMode=cv2.BORDER_REFLECT) for x in maps])


def _coarse_vectors(maps: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """(N, S, S) x2 -> (N, V views, 8 dihedrals, D) low-frequency DCT vectors, unit norm.

    Views: ``COARSE_VIEWS``. The centre turned by 30 degrees, against the centre under the
    8 rotations/flips, catches copies turned by any angle within ~15 degrees of 30 or 60
    plus a multiple of 90. The centre halves turned by 15 and 45 degrees, against a copy's
    whole thumbnail, catch copies turned by about those angles and cropped to the largest
    upright square inside, as the Kaggle set's rotations were: on the real photos of
    ``benchmarks/bench_dedupe.py --mode real`` (planting seed 0, 2026-12-03), of the 27
    copies that no candidate pair joined to their photo, 8 now have the photo among their
    8 best coarse partners or are among its 8 (the 3 views before: none).
    """
    lo = COARSE_SIZE
    u, v = np.meshgrid(np.arange(lo), np.arange(lo), indexing="ij")
    keep = ((u + v) <= lo // 2) & ((u + v) > 0)  # a dihedral-symmetric low-pass, no DC
    weights = (math.sqrt(LUMA_WEIGHT), math.sqrt(1 - LUMA_WEIGHT))
    views = []
    for side, angle in COARSE_VIEWS:
        lo_edge = round(FP_SIZE * (1 - side) / 2)
        hi_edge = FP_SIZE - lo_edge
        sources = (maps, contrast)
        if angle:
            sources = (_turned(maps, angle), _turned(contrast, angle))
        to_dct = _dct_matrix(lo) @ _area_matrix(hi_edge - lo_edge, lo)  # (lo, side)
        coefs = [_dct_of(m[:, lo_edge:hi_edge, lo_edge:hi_edge], to_dct) for m in sources]
        per_dihedral = []
        for d in range(8):
            chans = []
            for coef in coefs:
                kept = _dihedral_dct(coef, d)[:, keep]  # (N, D/2)
                chans.append(kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-6))
            joined = [w * c for w, c in zip(weights, chans, strict=True)]
            per_dihedral.append(np.concatenate(joined, axis=1))
        views.append(np.stack(per_dihedral, axis=1))
    return np.ascontiguousarray(np.stack(views, axis=1), dtype=np.float32)


def _dct_of(maps: np.ndarray, to_dct: np.ndarray) -> np.ndarray:
    """(N, S, S) maps -> (N, K, K) coefficients ``to_dct @ map @ to_dct.T``, as two products
    over the whole batch; ``to_dct``: (K, S)."""
    n, s, k = len(maps), maps.shape[1], len(to_dct)
    rows = (maps.reshape(n * s, s) @ to_dct.T).reshape(n, s, k)  # each map @ to_dct.T
    both = np.swapaxes(rows, 1, 2).reshape(n * k, s) @ to_dct.T  # (N * K, K)
    return np.swapaxes(both.reshape(n, k, k), 1, 2)


def _dihedral_dct(coef: np.ndarray, d: int) -> np.ndarray:
    """The (..., K, K) DCT coefficients of each map turned by d (0-7: rot90 d // 2 times,
    then a left-right flip if d is odd, as ``copies.turn``) from those of the maps.

    Reversing the last axis of a map negates its coefficients of odd frequency along it
    (and the area averaging before, in equal bins, commutes with the reversal); rot90 is
    that reversal, then a transpose. Exact: one DCT per view instead of eight.
    """
    odd = np.where(np.arange(coef.shape[-1]) % 2, -1.0, 1.0).astype(coef.dtype)
    for _ in range(d // 2):
        coef = np.swapaxes(coef * odd, -2, -1)
    return coef * odd if d % 2 else coef


@dataclass
class Features:
    """What the coarse search needs, derived from (N, FP_DIM) fingerprints."""

    maps: np.ndarray  # (N, S, S) float32 grey thumbnails
    coarse: np.ndarray  # (N, V, 8, D) float32: V = len(COARSE_VIEWS)

    @classmethod
    def build(cls, fps: np.ndarray) -> Features:
        maps = np.asarray(fps, np.float32).reshape(-1, FP_SIZE, FP_SIZE)
        return cls(maps, _coarse_vectors(maps, _local_contrast(maps)))


# --------------------------------------------------------------------------- comparing
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


def _spans(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into at most ``parts`` consecutive non-empty (start, stop) spans."""
    edges = np.linspace(lo, hi, parts + 1).astype(int).tolist()
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _symmetric_top(
    scores: Callable[[tuple[int, int], tuple[int, int]], np.ndarray],
    n: int,
    neighbours: int,
    workers: int,
    block: int,
) -> np.ndarray:
    """(P, 2) unique pairs i < j: each of n items with its ``neighbours`` best partners
    under a symmetric score.

    Only the blocks on and above the diagonal are computed (``block`` x n floats at a
    time, the columns split between ``workers`` threads); each block updates both its
    rows' and its columns' running top-k, those too in the threads, a slice of rows or
    columns each (the selection is per row, so the slices give the same pairs; done in the
    calling thread it took most of the coarse stage, the threads idle).

    Args:
        scores: ((row start, stop), (column start, stop)) -> the (rows, columns) block
            of scores.
    """
    k = min(neighbours, n - 1)
    if k < 1:
        return np.zeros((0, 2), np.int64)
    top_s = np.full((n, k), -np.inf, np.float32)
    top_i = np.full((n, k), -1, np.int64)

    def update(first: int, best: np.ndarray, offset: int) -> None:
        """Merge (R, M) scores of items first.. against items offset.. into their top-k."""
        cols = _top_rows(best, k)
        rows = slice(first, first + len(best))
        top_s[rows], top_i[rows] = _merge_top(
            top_s[rows], top_i[rows], np.take_along_axis(best, cols, 1), cols + offset
        )

    def own_rows(start: int, best: np.ndarray, a: int, b: int) -> None:
        """Rows a..b of the block starting at ``start``, against every later item."""
        update(start + a, best[a:b], start)

    def later_items(start: int, best: np.ndarray, a: int, b: int) -> None:
        """Items a..b after the block: the same scores, seen from them."""
        update(a, np.ascontiguousarray(best[:, a - start : b - start].T), start)

    with one_thread_per_worker(), ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n, block):
            stop = min(n, start + block)
            columns = _spans(start, n, workers)
            parts = pool.map(scores, [(start, stop)] * len(columns), columns)
            best = np.concatenate(list(parts), axis=1)  # (B, N - start)
            rows = np.arange(stop - start)
            best[rows, rows] = -np.inf  # not itself
            jobs = [partial(own_rows, start, best, *span) for span in _spans(0, len(best), workers)]
            jobs += [partial(later_items, start, best, *span) for span in _spans(stop, n, workers)]
            list(pool.map(lambda job: job(), jobs))
    pairs = np.stack([np.repeat(np.arange(n), k), top_i.ravel()], axis=1)
    pairs = pairs[(pairs[:, 1] >= 0) & np.isfinite(top_s.ravel())]
    return np.unique(np.sort(pairs, axis=1), axis=0)


def coarse_pairs(f: Features, neighbours: int, workers: int = 1, block: int = 512) -> np.ndarray:
    """(P, 2) unique pairs i < j: each image with its ``neighbours`` best coarse partners."""
    queries = np.ascontiguousarray(f.coarse[:, :, 0])  # (N, V, D) each image as it is
    base = np.ascontiguousarray(f.coarse.transpose(1, 2, 3, 0))  # (V, 8, D, N) all turns

    def scores(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        (start, stop), (c0, c1) = rows, cols
        best = np.full((stop - start, c1 - c0), -np.inf, np.float32)
        for qv, bv in COARSE_COMBINATIONS:
            q = queries[start:stop, qv]
            for d in range(8):
                np.maximum(best, q @ base[bv, d, :, c0:c1], out=best)
        return best

    return _symmetric_top(scores, len(f.maps), neighbours, workers, block)


def word_pairs(
    seen: sparse.csr_matrix,
    mirrored: sparse.csr_matrix,
    neighbours: int,
    workers: int = 1,
    block: int = 512,
) -> np.ndarray:
    """(P, 2) unique pairs i < j: each image with its ``neighbours`` best visual-word partners.

    Args:
        seen, mirrored: (N, W) sparse unit visual-word vectors (``keypoints.word_vectors``);
            the score of i and j is the better of j as seen and j mirrored. It is symmetric:
            the vocabulary is closed under mirroring, so i as seen against j mirrored is
            i mirrored against j as seen.
    """
    seen, mirrored = sparse.csr_matrix(seen), sparse.csr_matrix(mirrored)

    def scores(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        (start, stop), (c0, c1) = rows, cols
        q = seen[start:stop].T.tocsr()  # (W, B)
        out = (seen[c0:c1] @ q).toarray()  # (C, B); scipy frees the GIL in the product
        np.maximum(out, (mirrored[c0:c1] @ q).toarray(), out=out)
        return np.ascontiguousarray(out.T, dtype=np.float32)

    return _symmetric_top(scores, seen.shape[0], neighbours, workers, block)
