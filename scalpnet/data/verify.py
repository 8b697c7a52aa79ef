"""Geometric verification: is a candidate pair the same photo, not just the same kind of skin?

On (96, 96) grey views of the two images, with their SIFT keypoints (``keypoints.py``):

1. the second image's descriptors (as seen, then mirrored: SIFT cannot model a flip)
   are matched to the first's with Lowe's ratio test, and one affine transform is fitted
   to the matches with RANSAC (``cv2.estimateAffine2D``: rotation by any angle, scale,
   shear, shift);
2. the **pair score** is the normalised correlation of the two views' fine texture (each
   view minus its Gaussian blur, sigma ``HIGHPASS_SIGMA``) after warping the second onto
   the first with that transform, over the pixels both cover (at least ``MIN_OVERLAP`` of
   the view, else 0). The better orientation counts; negative correlations count as 0.

Same photo: the hair and skin detail line up, typically 0.6-1.0. Different photos: about
0 +- 0.1 even when their colours and textures look alike, since a transform fitted to
chance matches aligns nothing (a shared watermark adds a little). ``grouping.py`` gives
the calibration of the threshold.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from scalpnet.data.fingerprints import view
from scalpnet.data.keypoints import Keypoints, extract

RATIO = 0.9  # Lowe's ratio test
RANSAC_PIXELS = 1.5  # reprojection error allowed, pixels of the 96x96 view
RANSAC_ITERATIONS = 500
MIN_MATCHES = 6  # fewer matches than this: no transform, score 0
MIN_INLIERS = 5  # fewer RANSAC inliers than this: no transform, score 0
HIGHPASS_SIGMA = 1.5  # pixels of the 96x96 view
MIN_OVERLAP = 0.15  # of the view: a smaller common area cannot be judged, score 0


class Verifier:
    """Scores pairs of N images.

    Args:
        views: (N, S, S) uint8 grey views (``fingerprints.view``).
        keypoints: their SIFT keypoints (``keypoints.extract``).
    """

    def __init__(self, views: np.ndarray, keypoints: Keypoints) -> None:
        self.views = np.asarray(views, np.uint8)
        self.keypoints = keypoints
        self._fine: dict[tuple[int, bool], np.ndarray] = {}

    def fine(self, i: int, mirrored: bool = False) -> np.ndarray:
        """(S, S) float32 detail of view i: the view minus its Gaussian blur (cached)."""
        key = (i, mirrored)
        if key not in self._fine:  # two threads may both compute it: the same result
            v = self.views[i][:, ::-1] if mirrored else self.views[i]
            v = v.astype(np.float32)
            blur = cv2.GaussianBlur(v, (0, 0), HIGHPASS_SIGMA, borderType=cv2.BORDER_REFLECT)
            self._fine[key] = v - blur
        return self._fine[key]

    def transform(self, a: int, b: int, mirrored: bool) -> np.ndarray | None:
        """(2, 3) affine taking view b (mirrored or not) onto view a, or None."""
        pa, da = self.keypoints.get(a)
        pb, db = self.keypoints.get(b, mirrored)
        if len(pa) < MIN_MATCHES or len(pb) < MIN_MATCHES:
            return None
        found = cv2.BFMatcher(cv2.NORM_L2).knnMatch(db, da, k=2)
        good = [m[0] for m in found if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
        if len(good) < MIN_MATCHES:
            return None
        src, dst = pb[[m.queryIdx for m in good]], pa[[m.trainIdx for m in good]]
        matrix, inliers = cv2.estimateAffine2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS,
            maxIters=RANSAC_ITERATIONS,
        )  # fmt: skip
        if matrix is None or inliers.sum() < MIN_INLIERS:
            return None
        return matrix

    def aligned_correlation(self, a: int, b: int, mirrored: bool, matrix: np.ndarray) -> float:
        """Correlation of the fine texture of view a and view b warped by ``matrix``."""
        fine_a, fine_b = self.fine(a), self.fine(b, mirrored)
        size = fine_a.shape[::-1]
        warped = cv2.warpAffine(fine_b, matrix, size, flags=cv2.INTER_LINEAR)
        cover = cv2.warpAffine(np.ones_like(fine_b), matrix, size, flags=cv2.INTER_LINEAR)
        mask = cover > 0.99
        if mask.sum() < MIN_OVERLAP * mask.size:
            return 0.0
        x, y = fine_a[mask], warped[mask]
        x, y = x - x.mean(), y - y.mean()
        return float(x @ y / max(float(np.linalg.norm(x) * np.linalg.norm(y)), 1e-6))

    def score(self, a: int, b: int, enough: float = 1.0) -> float:
        """The pair score of images a and b in [0, 1] (see the module doc).

        Tries b as seen, then mirrored unless the first already reaches ``enough``.
        """
        a, b = min(a, b), max(a, b)  # the same number whichever way round it is asked
        best = 0.0
        for mirrored in (False, True):
            matrix = self.transform(a, b, mirrored)
            if matrix is not None:
                best = max(best, self.aligned_correlation(a, b, mirrored, matrix))
            if best >= enough:
                break
        return best

    def scores(self, pairs: np.ndarray, enough: float = 1.0, workers: int = 1) -> np.ndarray:
        """(P, 2) int pairs -> (P,) float32 pair scores, in ``workers`` threads."""
        jobs = pairs.tolist()

        def run(chunk: list) -> list[float]:
            return [self.score(a, b, enough) for a, b in chunk]

        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(run, [jobs[w::workers] for w in range(workers)]))
        out = np.zeros(len(jobs), np.float32)
        for w, part in enumerate(parts):
            out[w::workers] = part
        return out


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The pair score of two (H, W, 3) uint8 RGB images: 1.0 for the same pixels."""
    views = np.stack([view(a), view(b)])
    return Verifier(views, extract(views, workers=1)).score(0, 1)
