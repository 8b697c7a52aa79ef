"""Geometric verification: is a candidate pair the same photo, not just the same kind of skin?

On (96, 96) grey views of the two images, with the SIFT keypoints of their (160, 160)
detail views (``keypoints.py``; matched positions are taken into the 96x96 frame):

1. the second image's descriptors (as seen, then mirrored: SIFT cannot model a flip)
   are matched to the first's with Lowe's ratio test (``find_groups`` gives them as
   RootSIFT on 48 principal axes, ``keypoints.project``; raw SIFT works the same); an
   orientation goes on only when at least ``MIN_INLIERS`` matches agree on one pose
   (rotation, zoom and where they put the view's centre: Lowe's Hough clustering,
   ``hough_peaks``). Chance matches between
   two photos rarely agree, so most candidate pairs end here, before the costly steps.
   One affine transform is fitted to the matches with RANSAC (``cv2.estimateAffine2D``:
   rotation by any angle, scale, shear, shift); a mirror is folded into the transform,
   so it maps the second view's pixels onto the first's as they are;
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
one scalp taken moments apart can reach 0.661. ``grouping.py`` gives the calibration of the
threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np

from scalpnet.data.fingerprints import Scan
from scalpnet.data.keypoints import Keypoints, extract
from scalpnet.data.threads import one_thread_per_worker

RATIO = 0.9  # Lowe's ratio test
RANSAC_PIXELS = 2.5  # reprojection error allowed, pixels of the 96x96 view
RANSAC_ITERATIONS = 500
MIN_MATCHES = 6  # fewer matches than this: no transform, score 0
MIN_INLIERS = 5  # fewer RANSAC inliers than this: no transform, score 0
HOUGH_ANGLE = 30.0  # degrees per bin of the change in keypoint orientation
HOUGH_SCALE = 1.0  # octaves per bin of the change in keypoint size
HOUGH_OCTAVES = 3  # changes of size beyond this many octaves share the end bins
HOUGH_SHIFT = 0.15  # of the view's side, per bin of where a match puts the other's centre
# (0.25 let 3.8x more orientations of different images through, the same copies: one-off
# probe, candidate pairs of 3,000 synthetic images with 220 keypoints per view, 2026-12-03)
HIGHPASS_SIGMA = 1.5  # pixels of the 96x96 view
MIN_OVERLAP = 0.08  # of the view: a smaller common area cannot be judged, score 0
MAX_SCALE = 6.0  # a fitted transform zooming more than this (either way) is not a copy
REFINE_FROM = 0.05  # alignments scoring from here up to the threshold are refined by ECC
ECC_ITERATIONS = 30
ECC_EPSILON = 1e-4
MATCH_ROWS = 16_384  # partners' descriptors matched at a time (about 100 partners of 160)
_EDGE = np.ones((5, 5), np.uint8)  # the high-pass near a warped border is not texture


class Orientation(NamedTuple):
    """Keypoint matches of view b (as seen, or mirrored) to view a."""

    mirrored: bool
    src: np.ndarray  # (M, 2) float32 positions in view b (mirrored when ``mirrored``)
    dst: np.ndarray  # (M, 2) float32 the matching positions in view a


class Match(NamedTuple):
    """A verified pair: its score and, when one was found, the alignment."""

    score: float
    matrix: np.ndarray | None  # (3, 3) affine taking view b's pixels onto view a's


class Verifier:
    """Scores pairs of N images.

    Args:
        views: (N, S, S) uint8 grey views (``fingerprints.view``).
        keypoints: the SIFT keypoints of their detail views (``keypoints.extract``, raw, or
            ``keypoints.project``), or of any square view of the same images: positions
            are scaled to ``views``.
    """

    def __init__(self, views: np.ndarray, keypoints: Keypoints) -> None:
        self.views = np.asarray(views, np.uint8)
        self.keypoints = keypoints
        self._fine: dict[int, np.ndarray] = {}
        self.size = side = self.views.shape[-1]
        self._mirror = np.array([[-1, 0, side - 1], [0, 1, 0], [0, 0, 1]], np.float64)

    def fine(self, i: int) -> np.ndarray:
        """(S, S) float32 detail of view i: the view minus its Gaussian blur (cached)."""
        if i not in self._fine:  # two threads may both compute it: the same result
            self._fine[i] = _highpass(self.views[i].astype(np.float32))
        return self._fine[i]

    def orientations(self, a: int, partners: Sequence[int]) -> list[list[Orientation]]:
        """Keypoint matches of each partner b's view (as seen, and mirrored) to view a's.

        Matches pass Lowe's ratio test, all partners in one matrix product. An orientation
        is kept when it has at least ``MIN_MATCHES`` matches and at least ``MIN_INLIERS``
        of them agree on one pose (``hough_peaks``): the matches of a copy do, chance
        matches between different photos rarely do, and this check costs far less than
        the RANSAC fit and the correlation it spares them.

        Returns:
            Per partner, the orientations kept, the one with more matches first.
        """
        found: list[list[Orientation]] = [[] for _ in partners]
        kp = self.keypoints
        pa, da = kp.get(a)
        ka = len(pa)
        slots = [slot for slot, b in enumerate(partners) if len(kp.points[b]) >= MIN_MATCHES]
        if ka < MIN_MATCHES or not slots:
            return found
        # a's descriptors matched to every partner's, as seen and mirrored; each (partner,
        # orientation) is a side of the ratio test and of the pose check.
        bs = [partners[slot] for slot in slots]
        points = np.concatenate([kp.points[b] for b in bs])  # (Q, 4)
        owner = np.repeat(np.arange(len(bs)), [len(kp.points[b]) for b in bs])  # (Q,) partner
        query, train = self._ratio_matches(da, bs)  # of the Q partners' keypoints as seen,
        mirrored = query >= len(points)  # then Q more mirrored
        rows = query - len(points) * mirrored  # (M,) keypoint of the partners
        src = points[rows]  # (M, 4) in b, mirrored where the descriptor was
        src[mirrored] = kp.mirror(src[mirrored])
        side_of = 2 * owner[rows] + mirrored  # (M,) partner k as seen: 2k, mirrored: 2k + 1
        sides = 2 * len(slots)
        counts = np.bincount(side_of, minlength=sides)
        peaks = hough_peaks(side_of, src, pa[train], sides, kp.size)
        order = np.argsort(side_of, kind="stable")  # each side's matches in query order
        starts = np.cumsum(counts) - counts
        for side in np.flatnonzero((counts >= MIN_MATCHES) & (peaks >= MIN_INLIERS)).tolist():
            matched = order[starts[side] : starts[side] + counts[side]]
            found[slots[side // 2]].append(Orientation(
                bool(side % 2), self._in_view(src[matched, :2]),
                self._in_view(pa[train[matched], :2]),
            ))  # fmt: skip
        for options in found:
            options.sort(key=lambda o: -len(o.src))
        return found

    def _ratio_matches(self, da: np.ndarray, bs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Ratio-test matches of the partners' descriptors, as seen (query q) and mirrored
        (query Q + q), to (T, D) ``da``: (M,) queries, ascending within each partner and
        orientation, and (M,) train rows.

        Up to ``MATCH_ROWS`` partners' descriptors at a time, so that an image many others
        chose as a candidate does not make one (T, 2Q) matrix of hundreds of MB: a hub of
        390 partners in 12,000 synthetic images made 128 MB of temporaries, 36 MB so. A
        query's match does not depend on the other queries.
        """
        kp = self.keypoints
        counts = np.array([len(kp.descriptors[b]) for b in bs])
        total = int(counts.sum())
        first = np.concatenate([[0], np.cumsum(counts)])  # where each partner's rows begin
        queries, trains = [], []
        start = 0
        while start < len(bs):  # partners [start, stop): at least one, within MATCH_ROWS
            fits = int(np.searchsorted(first, first[start] + MATCH_ROWS, "right")) - 1
            stop = max(start + 1, fits)
            seen = np.concatenate([kp.descriptors[b] for b in bs[start:stop]])  # (q, D)
            query, train = ratio_test(kp.dots(da, seen))  # (T, 2q): as seen, then mirrored
            mirrored = query >= len(seen)
            queries.append(query - len(seen) * mirrored + first[start] + total * mirrored)
            trains.append(train)
            start = stop
        return np.concatenate(queries), np.concatenate(trains)

    def _in_view(self, points: np.ndarray) -> np.ndarray:
        """(M, 2) keypoint positions -> the same places in the verification views' pixels."""
        scale = self.size / self.keypoints.size
        return points if scale == 1 else (points + 0.5) * scale - 0.5

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
        return self._best(a, b, self.orientations(a, [b])[0], enough)

    def _best(self, a: int, b: int, options: list[Orientation], enough: float) -> Match:
        best = Match(0.0, None)
        for mirrored, src, dst in options:
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
        """(P, 2) int pairs (a, b) -> their P matches (alignments b -> a), in threads.

        The pairs of one image a are matched together (one product for all its partners).
        """
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        order = np.argsort(pairs[:, 0], kind="stable")
        _, starts = np.unique(pairs[order, 0], return_index=True)
        spans = np.split(order, starts[1:]) if len(pairs) else []
        out: list[Match] = [Match(0.0, None)] * len(pairs)

        def run(jobs: list[np.ndarray]) -> None:
            for rows in jobs:
                a = int(pairs[rows[0], 0])
                bs = pairs[rows, 1].tolist()
                for row, b, options in zip(
                    rows.tolist(), bs, self.orientations(a, bs), strict=True
                ):
                    out[row] = self._best(a, b, options, enough)

        with one_thread_per_worker(), ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, [spans[w::workers] for w in range(workers)]))
        return out


def ratio_test(dots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowe's ratio test on (T >= 2, Q) dot products of unit-norm descriptors, train by
    query -> indices of the queries whose nearest train descriptor (L2) is clearly nearer
    than the second, and that nearest.

    For unit vectors the squared distance is 2 - 2 x.y, so a query passes when its largest
    dot product b is the only one at or above 1 - (1 - b) / RATIO^2. Reductions across the
    train rows run along contiguous queries, in the smallest integer type that holds T
    (np.count_nonzero along an axis widens every bool to 8 bytes first, 16x slower here).
    A passing query has one close train row, so the sum of the close rows' indices is
    its nearest: no argmax, which gathers columns. OpenCV's brute-force matcher finds
    the same matches.
    """
    small = np.min_scalar_type(len(dots))  # wraps only in columns with several close rows
    best = dots.max(axis=0)  # (Q,)
    near = (dots >= 1.0 - (1.0 - best) / (RATIO * RATIO)).view(np.uint8)  # (T, Q) 0 or 1
    keep = np.flatnonzero(np.add.reduce(near, axis=0, dtype=small) == 1)
    rows = np.arange(len(dots), dtype=small)[:, None]
    nearest = np.add.reduce(np.multiply(near, rows, dtype=small), axis=0, dtype=small)
    return keep, nearest[keep].astype(np.int64)


def hough_peaks(
    side_of: np.ndarray, src: np.ndarray, dst: np.ndarray, sides: int, size: int
) -> np.ndarray:
    """The most matches of each side that agree on one pose: Lowe's Hough clustering.

    Each match (keypoint b in view b, keypoint a in view a) implies a similarity transform:
    a rotation by the change of keypoint orientation, a zoom by the change of size, and the
    shift that takes b onto a. It votes for the bin of that rotation (``HOUGH_ANGLE``
    degrees), zoom (``HOUGH_SCALE`` octaves; beyond ``HOUGH_OCTAVES`` either way, the end
    bins) and of where it puts the centre of view b in view a (``HOUGH_SHIFT`` of the
    view's side, the two nearest bins in x and in y). The matches of a copy agree; chance
    matches between two photos rarely do, even when their hair runs the same way.

    Args:
        side_of: (M,) int, the side (pair and orientation) each match belongs to.
        src, dst: (M, 4) float, each match's keypoint in view b and in view a as
            (x, y, orientation in degrees, log2 of size).
        sides: how many sides there are.
        size: the views' side, pixels.

    Returns:
        (sides,) int: the largest bin count of each side (0 without matches).
    """
    turn = (dst[:, 2] - src[:, 2]) % 360.0
    zoom = dst[:, 3] - src[:, 3]
    angle_bins, scale_bins = round(360 / HOUGH_ANGLE), round(2 * HOUGH_OCTAVES / HOUGH_SCALE)
    angle = np.floor(turn / HOUGH_ANGLE).astype(np.int64) % angle_bins
    scale = np.floor((zoom + HOUGH_OCTAVES) / HOUGH_SCALE)
    scale = np.clip(scale, 0, scale_bins - 1).astype(np.int64)
    # where b's centre lands in a under that similarity, in bins of the shift grid
    theta, factor = np.radians(turn), np.exp2(zoom)
    d = size / 2 - src[:, :2]
    centre = dst[:, :2] + factor[:, None] * np.stack([
        np.cos(theta) * d[:, 0] - np.sin(theta) * d[:, 1],
        np.sin(theta) * d[:, 0] + np.cos(theta) * d[:, 1],
    ], axis=1)  # fmt: skip
    grid = round(1 / HOUGH_SHIFT) * 3  # shifts up to a view's side beyond either edge
    where = np.clip(centre / (HOUGH_SHIFT * size) + grid / 3 - 0.5, -0.5, grid - 0.5)
    low = np.floor(where).astype(np.int64) + 1  # the lower of the two nearest, 0..grid
    pose = (side_of * angle_bins + angle) * scale_bins + scale
    votes = np.concatenate([
        (pose * (grid + 2) + low[:, 0] + dx) * (grid + 2) + low[:, 1] + dy
        for dx in (0, 1) for dy in (0, 1)
    ])  # fmt: skip
    cells, counts = np.unique(votes, return_counts=True)  # sparse: most bins are empty
    peaks = np.zeros(sides, np.int64)
    np.maximum.at(peaks, cells // (angle_bins * scale_bins * (grid + 2) ** 2), counts)
    return peaks


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
    scanned = Scan.of_images([a, b])
    return Verifier(scanned.views, extract(scanned.details, workers=1)).score(0, 1)
