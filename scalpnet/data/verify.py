"""Geometric verification: is a candidate pair the same photo, not just the same kind of skin?

On (96, 96) grey views of the two images, with their SIFT keypoints (``keypoints.py``):

1. the second image's descriptors (as seen, then mirrored: SIFT cannot model a flip)
   are matched to the first's with Lowe's ratio test, and one affine transform is fitted
   to the matches with RANSAC (``cv2.estimateAffine2D``: rotation by any angle, scale,
   shear, shift); a mirror is folded into the transform, so it maps the second view's
   pixels onto the first's as they are;
2. the **pair score** is the normalised correlation of the two views' fine texture
   (minus a Gaussian blur of sigma ``HIGHPASS_SIGMA``) after that alignment, judged in
   the frame of the view that shows the common part smaller (the other is blurred against
   aliasing and warped into it), over the pixels both cover (at least ``MIN_OVERLAP`` of
   that view, else 0). The better orientation counts; negative correlations count as 0;
3. an alignment that scores from ``REFINE_FROM`` up to the threshold is refined by ECC
   (``cv2.findTransformECC``: the affine transform that maximises the correlation of the
   two views, started from RANSAC's) and scored again. A few keypoint inliers of a copy
   zoomed 2x fix the transform only to a pixel or two, and fine texture decorrelates
   within one pixel: on real photos this lifts such copies from 0.1-0.55 to 0.92-0.99,
   while different photos stay near 0 (ECC cannot align texture that is not there).

Same photo: the hair and skin detail line up: 0.92-0.99 for a Kaggle-style copy, lower
for a re-export of the photo with another crop, watermark and compression. Different
photos: about 0 +- 0.1 even when their colours and textures look alike, since a transform
fitted to chance matches aligns nothing (a shared watermark adds a little); two shots of
one scalp taken moments apart can reach 0.66. ``grouping.py`` gives the calibration of the
threshold.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np

from scalpnet.data.candidates import blas_single_thread
from scalpnet.data.fingerprints import view
from scalpnet.data.keypoints import Keypoints, extract

RATIO = 0.9  # Lowe's ratio test
RANSAC_PIXELS = 2.5  # reprojection error allowed, pixels of the 96x96 view
RANSAC_ITERATIONS = 500
MIN_MATCHES = 6  # fewer matches than this: no transform, score 0
MIN_INLIERS = 5  # fewer RANSAC inliers than this: no transform, score 0
HIGHPASS_SIGMA = 1.5  # pixels of the 96x96 view
MIN_OVERLAP = 0.08  # of the view: a smaller common area cannot be judged, score 0
MAX_SCALE = 6.0  # a fitted transform zooming more than this (either way) is not a copy
REFINE_FROM = 0.05  # alignments scoring from here up to the threshold are refined by ECC
ECC_ITERATIONS = 30
ECC_EPSILON = 1e-4
_EDGE = np.ones((5, 5), np.uint8)  # the high-pass near a warped border is not texture


class Match(NamedTuple):
    """A verified pair: its score and, when one was found, the alignment."""

    score: float
    matrix: np.ndarray | None  # (3, 3) affine taking view b's pixels onto view a's


class Verifier:
    """Scores pairs of N images.

    Args:
        views: (N, S, S) uint8 grey views (``fingerprints.view``).
        keypoints: their SIFT keypoints (``keypoints.extract``).
    """

    def __init__(self, views: np.ndarray, keypoints: Keypoints) -> None:
        self.views = np.asarray(views, np.uint8)
        self.keypoints = keypoints
        self._fine: dict[int, np.ndarray] = {}
        side = self.views.shape[-1]
        self._mirror = np.array([[-1, 0, side - 1], [0, 1, 0], [0, 0, 1]], np.float64)

    def fine(self, i: int) -> np.ndarray:
        """(S, S) float32 detail of view i: the view minus its Gaussian blur (cached)."""
        if i not in self._fine:  # two threads may both compute it: the same result
            self._fine[i] = _highpass(self.views[i].astype(np.float32))
        return self._fine[i]

    def orientations(self, a: int, b: int) -> list[tuple[bool, np.ndarray, np.ndarray]]:
        """Ratio-test matches of view b's keypoints (as seen, and mirrored) to view a's:
        (mirrored, b's (M, 2) positions, a's (M, 2) positions) for each orientation with at
        least ``MIN_MATCHES``, the one with more matches first."""
        pa, da = self.keypoints.get(a)
        if len(pa) < MIN_MATCHES or len(self.keypoints.points[b]) < MIN_MATCHES:
            return []
        sides = [self.keypoints.get(b, mirrored) for mirrored in (False, True)]
        query, train = ratio_matches(np.concatenate([d for _, d in sides]), da)  # one product
        k = len(sides[0][0])
        found = []
        for mirrored, (points, _) in zip((False, True), sides, strict=True):
            rows = (query >= k) == mirrored
            if rows.sum() >= MIN_MATCHES:
                found.append((mirrored, points[query[rows] - k * mirrored], pa[train[rows]]))
        return sorted(found, key=lambda f: -len(f[1]))

    def transform(self, src: np.ndarray, dst: np.ndarray, mirrored: bool) -> np.ndarray | None:
        """(3, 3) affine fitted by RANSAC to matched positions, taking view b (mirrored
        first, or not) onto view a; None with fewer than ``MIN_INLIERS`` inliers."""
        matrix, inliers = cv2.estimateAffine2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS,
            maxIters=RANSAC_ITERATIONS,
        )  # fmt: skip
        if matrix is None or inliers.sum() < MIN_INLIERS or not _plausible(matrix):
            return None
        if np.linalg.det(matrix[:, :2]) < 0:  # a mirror: the other orientation's job
            return None
        matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
        return matrix @ self._mirror if mirrored else matrix

    def _frame(
        self, a: int, b: int, matrix: np.ndarray
    ) -> tuple[int, np.ndarray, np.ndarray, bool]:
        """The coarser of the two frames: (the receiving view's index, the matrix taking
        the other view onto it, the other view as float32 blurred against aliasing,
        whether a and b swapped). The view whose pixels each cover more of the photo
        receives the other."""
        shrink = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))  # b's pixel, in a's
        swapped = shrink > 1
        if swapped:  # a shows the common part smaller: judge in b's frame
            a, b, matrix, shrink = b, a, np.linalg.inv(matrix), 1 / shrink
        moved = self.views[b].astype(np.float32)
        blur = 0.5 * np.sqrt(max(shrink**-2 - 1.0, 0.0))  # anti-aliasing, pixels of b
        if blur > 0.3:
            moved = cv2.GaussianBlur(moved, (0, 0), blur, borderType=cv2.BORDER_REFLECT)
        return a, matrix, moved, swapped

    def refine(self, a: int, b: int, matrix: np.ndarray) -> np.ndarray:
        """(3, 3) affine b -> a refined by ECC from ``matrix``: the alignment maximising
        the correlation of the two views (unchanged when ECC does not converge, or when
        ``matrix`` is no plausible alignment)."""
        if not _plausible(matrix[:2]):
            return matrix
        a, inside_matrix, moved, swapped = self._frame(a, b, matrix)
        warp = np.linalg.inv(inside_matrix)[:2].astype(np.float32)  # a's pixels -> b's
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPSILON)
        try:
            _, warp = cv2.findTransformECC(
                self.views[a].astype(np.float32), moved, warp, cv2.MOTION_AFFINE, criteria,
                None, 1,
            )  # fmt: skip
        except cv2.error:  # no convergence, or a degenerate warp
            return matrix
        if not _plausible(warp):
            return matrix
        refined = np.linalg.inv(np.vstack([warp, [0.0, 0.0, 1.0]]).astype(np.float64))
        return np.linalg.inv(refined) if swapped else refined

    def correlation(self, a: int, b: int, matrix: np.ndarray) -> float | None:
        """Correlation of the fine texture of views a and b aligned by ``matrix`` (b -> a);
        None when they would share less than ``MIN_OVERLAP``: too little to judge.

        Judged in the coarser of the two frames: the view whose pixels each cover more of
        the photo receives the other, blurred first so that shrinking it does not alias.
        """
        if not _plausible(matrix[:2]):
            return None
        a, matrix, moved, _ = self._frame(a, b, matrix)
        mask = _coverage(matrix, self.views.shape[1:])
        if mask.mean() < MIN_OVERLAP:
            return None
        moved = cv2.warpAffine(
            moved, matrix[:2], mask.shape[::-1], flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )  # fmt: skip
        inside = cv2.erode(mask.astype(np.uint8), _EDGE) > 0
        if inside.mean() < MIN_OVERLAP:
            return None
        x, y = self.fine(a)[inside], _highpass(moved)[inside]
        x, y = x - x.mean(), y - y.mean()
        return float(x @ y / max(float(np.linalg.norm(x) * np.linalg.norm(y)), 1e-6))

    def match(self, a: int, b: int, enough: float = 1.0) -> Match:
        """The pair score of images a and b in [0, 1] (see the module doc), and the
        alignment that gave it (b -> a).

        Tries the orientation of b (as seen or mirrored) with more keypoint matches
        first, then the other unless the first already reaches ``enough``. An alignment
        scoring from ``REFINE_FROM`` up to ``enough`` is refined (:meth:`refine`).
        """
        best = Match(0.0, None)
        for mirrored, src, dst in self.orientations(a, b):
            matrix = self.transform(src, dst, mirrored)
            if matrix is not None:
                score, matrix = self.aligned(a, b, matrix, enough)
                if score is not None and score > best.score:
                    best = Match(score, matrix)
            if best.score >= enough:
                break
        return best

    def aligned(
        self, a: int, b: int, matrix: np.ndarray, enough: float = 1.0
    ) -> tuple[float | None, np.ndarray]:
        """(correlation or None, alignment) of views a and b under ``matrix`` (b -> a),
        refined (:meth:`refine`) when it scores from ``REFINE_FROM`` up to ``enough``."""
        score = self.correlation(a, b, matrix)
        if score is not None and REFINE_FROM <= score < enough:
            refined = self.refine(a, b, matrix)
            again = self.correlation(a, b, refined)
            if again is not None and again > score:
                return again, refined
        return score, matrix

    def score(self, a: int, b: int, enough: float = 1.0) -> float:
        """The pair score of images a and b (the same whichever way round it is asked)."""
        return self.match(min(a, b), max(a, b), enough).score

    def matches(self, pairs: np.ndarray, enough: float = 1.0, workers: int = 1) -> list[Match]:
        """(P, 2) int pairs (a, b) -> their P matches (alignments b -> a), in threads."""
        jobs = pairs.tolist()

        def run(chunk: list) -> list[Match]:
            return [self.match(a, b, enough) for a, b in chunk]

        with blas_single_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(run, [jobs[w::workers] for w in range(workers)]))
        out: list[Match] = [Match(0.0, None)] * len(jobs)
        for w, part in enumerate(parts):
            out[w::workers] = part
        return out


def ratio_matches(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowe's ratio test: (Q, 128) and (T >= 2, 128) descriptors -> indices of the queries
    whose nearest train descriptor (L2) is clearly nearer than the second, and that nearest.

    One small matrix product instead of OpenCV's brute-force matcher: the same matches
    (checked on real photos), with no Python object per match.
    """
    d2 = (
        np.einsum("ij,ij->i", query, query)[:, None]
        + np.einsum("ij,ij->i", train, train)[None, :]
        - 2.0 * (query @ train.T)
    )
    np.maximum(d2, 0.0, out=d2)
    nearest = np.argmin(d2, axis=1)
    first, second = np.partition(d2, 1, axis=1)[:, :2].T
    keep = np.flatnonzero(first < RATIO * RATIO * second)
    return keep, nearest[keep]


def _plausible(matrix: np.ndarray) -> bool:
    """Whether a (2, 3) affine could map a copy onto its photo: it zooms less than
    MAX_SCALE either way (and is not degenerate)."""
    det = abs(float(np.linalg.det(np.asarray(matrix, np.float64)[:2, :2])))
    return MAX_SCALE**-2 < det < MAX_SCALE**2


def _coverage(matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(S, S) bool: the pixels of a view that another view of ``shape`` covers under
    ``matrix`` (3, 3), the other onto this one."""
    ones = np.ones(shape, np.float32)
    return cv2.warpAffine(ones, matrix[:2], shape[::-1], flags=cv2.INTER_LINEAR) > 0.99


def _highpass(v: np.ndarray) -> np.ndarray:
    """(S, S) float32 minus its Gaussian blur of sigma HIGHPASS_SIGMA."""
    return v - cv2.GaussianBlur(v, (0, 0), HIGHPASS_SIGMA, borderType=cv2.BORDER_REFLECT)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The pair score of two (H, W, 3) uint8 RGB images: 1.0 for the same pixels."""
    views = np.stack([view(a), view(b)])
    return Verifier(views, extract(views, workers=1)).score(0, 1)
