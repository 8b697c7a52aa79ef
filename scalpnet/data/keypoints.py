"""SIFT keypoints of every detail view, as seen and mirrored, and their visual-word vectors.

Keypoints come from the (160, 160) detail views (``fingerprints.DETAIL_SIZE``), not the
96x96 ones: a copy magnified 1.5-2x (a rotation's inner square, a crop, a zoom) shows
detail that a 96x96 view of its photo has lost, so its keypoints found nothing to match
there. On the real photos of ``benchmarks/bench_dedupe.py --mode real`` (2026-12-03) 31
planted copies failed verification against their photo at 96 px; 220 keypoints of each
160 px view aligned 23 of them (a one-off probe), and pair recall rose from 0.896 to 0.933
with no false group (at each size's lowest threshold without one). They cost about twice
the SIFT time.

Each view keeps its 160 strongest keypoints (``FEATURES``), not 220: SIFT spends 60% of
its time on the descriptors and verification compares every keypoint of one view with
every keypoint of the other, so with 20 visual-word partners per image (``grouping.py``)
instead of 10 the audit finds more copies in less time. ``python benchmarks/bench_dedupe.py``
(2026-12-03 18:06-18:40, quiet), 220 keypoints and 10 partners -> 160 and 20: real-photo
recall pooled over three plantings at the default threshold 0.925 -> 0.935 (precision
1.000, no false group), synthetic 0.986 -> 0.988, 12,000 images 82.0 -> 75.4 s, peak RSS
2.76 -> 2.25 GB. With 20 partners, 128 keypoints gave 0.923, 190 gave 0.937, 220 gave 0.940
but joined two shots of one scalp. Asked again with the finished pipeline (one-off probe,
2026-12-05, 18 plantings of ``--mode real``, at 0.67): 128 keypoints would take a fifth off
the descriptors and a third off the products of verification, and on seeds 0-11 joined no
two photos (planted-pair recall 0.970 against 0.973) but on the held-out seeds 12-17 two
(0.964 against 0.973, where 160 joins one); 144 joined two shots of one scalp (Alopecia
Areata/1336 and 1337) that 160 never joins. So 160 stays.

SIFT is invariant to rotation by any angle, to scale and to brightness, but not to a
mirror: a flipped copy has other descriptors. Detecting again on the mirrored view would
double the cost; instead each descriptor is mirrored (its 4x4 spatial rows
reversed, its 8 orientation bins negated: within sampling error of detection on the mirror,
in tests/data/test_keypoints.py), each keypoint's x becomes ``S - 0.5 - x`` and its
orientation 180 degrees minus it.

What SIFT does not undo is a shear. The set's images are squashed to 256x256 whatever
their aspect ratio, so a copy turned by a non-right angle before the squash differs from
its photo by a turn and a zoom that differs between the two axes by the photo's aspect
ratio (1.33-1.5 for most photos). Of the 64 copies not grouped with their own photo at the
default threshold over six plantings of ``benchmarks/bench_dedupe.py --mode real``
(2026-12-04 00:22, raw descriptors as float32), 42 were never a candidate pair with it, 21
found no alignment and 1 scored below; 55 of the 64 had been turned so. A one-off probe
(2026-12-04) stretched each such photo's detail view back to its aspect ratio before SIFT:
35 of the 64 pairs then had at least 10 matches agreeing on one pose, against 12 without.
Simulating such stretches for every image, as ASIFT does, would add one SIFT pass (about
4.7 ms of CPU at 160 px) per stretch and image, and products to match; the keypoint stage
already takes 40% of the audit.

Raw descriptors are kept as OpenCV computes them, bytes: its float32 values are whole
numbers 0-255 (about 512 in norm), so nothing is lost, and 12,000 images' raw descriptors
take 246 MB instead of 983 MB. RootSIFT (words, ``project``) does not care about their
scale; ``Keypoints.unit`` makes them unit vectors where raw ones are multiplied. Measured
2026-12-04 11:59-12:14 (quiet, beside the float32 version in a worktree): the same 270,703
synthetic pairs verified and the same groups, 12,000 images 67.5-68.2 -> 64.5-65.4 s
end to end (``benchmarks/bench_dedupe.py``), and ``python -m scalpnet audit`` on those
files 70.1 -> 68.2 s at a peak RSS of 2.74 -> 2.12 GB.

Matching (``verify.py``) uses each descriptor as RootSIFT projected on its 48 principal
axes (``project``), not the raw 128 numbers: the descriptor products that bound
verification cost 48/128 as much. Measured with ``python benchmarks/bench_dedupe.py``
(2026-12-03 18:00, quiet): verification of the 12,000-image set 31.7 -> 25.7 s (end to end
87.4 -> 81.3 s), peak RSS 2.35 -> 2.66 GB (both descriptor sets while projecting);
real-photo recall / precision pooled over three planting seeds at the default threshold
0.925 / 1.000 -> 0.925 / 1.000, the same to 2 pairs in 2,277, and synthetic recall 0.986
unchanged.

Visual words: descriptors, as RootSIFT (the square root of the L1-normalised descriptor:
Hellinger distance, better for retrieval than L2 on raw SIFT), are quantised by a
two-level vocabulary tree (Nister and Stewenius): ``COARSE`` k-means words, and under
each ``FINE`` words fitted on the descriptors that fall in it, ``WORDS`` = 16,384 in all,
all fitted on a seeded sample of the set's own descriptors. Each descriptor gets the
nearest fine word of its nearest coarse word, and the second nearest there at half
weight. Half the coarse words are the mirror images of the other half (and their fine
words too), so a mirrored descriptor's word is the mirror of its word. Each image becomes
a sparse, L2-normalised, idf-weighted word histogram, as seen and mirrored (the same
histogram with its columns swapped: one assignment pass serves both).

Why so many words (measured with 96x96 views, 150 keypoints each, before the detail
views): with about 75 keypoints per view of skin, each in two words, 1,024
flat words left two different real photos sharing 27 words on average, against a median
of 54 for a photo and its planted copy; with this tree they share 3.5 against 20
(``--mode real`` images of ``benchmarks/bench_dedupe.py``, 2026-12-03). Planted pairs among
the word candidates (10 per image): 592 of 759 with 1,024 flat words, 686 with the tree,
694 with 16,384 flat k-means words (too slow to assign at 12,000 images); the tree costs
two small products per descriptor (256 coarse, then 64 fine words). Two copies of one
photo share many words whatever their rotation, crop or colour: this finds candidates the
32x32 DCT views miss.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import sparse

from scalpnet.data.threads import one_thread_per_worker

FEATURES = 160  # SIFT keypoints per 160x160 detail view (the strongest; about 200 found on skin)
CONTRAST = 0.02  # SIFT contrast threshold (OpenCV's 0.04 finds too few on smooth skin)
COARSE = 256  # coarse visual words (half fitted, half their mirror images)
FINE = 64  # fine words under each coarse word
WORDS = COARSE * FINE  # 16,384 visual words
SAMPLE = 48_000  # descriptors the vocabulary is fitted on
ASSIGN_IMAGES = 1024  # images whose descriptors are assigned to words at a time
MATCH_DIMS = 48  # principal axes of RootSIFT kept for matching (``project``)
_BINS = np.arange(128).reshape(4, 4, 8)
MIRROR = _BINS[::-1][:, :, (-np.arange(8)) % 8].ravel()  # descriptor of the mirrored patch


@dataclass(frozen=True)
class Keypoints:
    """SIFT keypoints of N views, with raw descriptors or their projection (``project``)."""

    points: list[np.ndarray]  # N x (K, 4) float32: x, y, orientation (degrees), log2 of size
    descriptors: list[np.ndarray]  # N x (K, D): raw SIFT, uint8 as OpenCV computes it (D =
    # 128, norm about 512), or projected RootSIFT, float32 of unit norm (D = MATCH_DIMS)
    size: int  # view side, pixels
    flip: np.ndarray | None = None  # (D,) +-1 per projected axis, how a mirror changes it,
    # the +1 axes first; None: raw SIFT, mirrored by the permutation MIRROR

    def __post_init__(self) -> None:
        if self.flip is not None and np.any(np.diff(self.flip) > 0):
            raise ValueError("flip must list the mirror-symmetric (+1) axes first")

    def mirrored(self, desc: np.ndarray) -> np.ndarray:
        """(K, D) descriptors -> the descriptors of the mirrored patches."""
        if self.flip is None:
            return np.ascontiguousarray(desc[:, MIRROR])
        return desc * self.flip

    def unit(self, desc: np.ndarray) -> np.ndarray:
        """(K, D) descriptors -> (K, D) float32 of unit norm (projected ones already are)."""
        if self.flip is not None:
            return desc
        desc = desc.astype(np.float32)
        return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-6)

    def dots(self, desc: np.ndarray, others: np.ndarray) -> np.ndarray:
        """(T, D) descriptors and (Q, D) others -> (T, 2Q) float32 dot products: with the
        others as seen, then with their mirror images.

        Projected descriptors hold their mirror-symmetric axes first (``project``) and a
        mirror negates only the rest, so both products are made of the same two halves:
        symmetric S plus antisymmetric A as seen, S - A mirrored. Half the arithmetic of
        multiplying by the mirrored descriptors too.
        """
        if self.flip is None:
            desc, others = self.unit(desc), self.unit(others)
            return desc @ np.concatenate([others, self.mirrored(others)]).T
        s, q = int(np.count_nonzero(self.flip > 0)), len(others)
        out = np.empty((len(desc), 2 * q), np.float32)
        symmetric = np.matmul(desc[:, :s], others[:, :s].T, out=out[:, :q])  # (T, Q)
        antisymmetric = desc[:, s:] @ others[:, s:].T  # (T, Q)
        np.subtract(symmetric, antisymmetric, out=out[:, q:])
        symmetric += antisymmetric  # in place: one (T, Q) temporary fewer
        return out

    def mirror(self, points: np.ndarray) -> np.ndarray:
        """(K, 4) keypoints of a view -> where SIFT finds them on its mirror image."""
        out = points.copy()
        out[:, 0] = self.size - 0.5 - out[:, 0]
        out[:, 2] = (180.0 - out[:, 2]) % 360.0  # a mirrored direction
        return out

    def get(self, i: int, mirrored: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(K, 4) keypoints and (K, D) descriptors of view i, or of its mirror image."""
        points, desc = self.points[i], self.descriptors[i]
        if not mirrored:
            return points, desc
        return self.mirror(points), self.mirrored(desc)


def extract(views: np.ndarray, workers: int | None = None) -> Keypoints:
    """(N, S, S) uint8 grey views -> their SIFT keypoints (threads; OpenCV frees the GIL)."""
    workers = workers or os.cpu_count() or 1
    local: dict[int, cv2.SIFT] = {}

    def one(view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import threading

        sift = local.setdefault(
            threading.get_ident(), cv2.SIFT_create(nfeatures=FEATURES, contrastThreshold=CONTRAST)
        )
        found, desc = sift.detectAndCompute(view, None)
        points = np.array([(*k.pt, k.angle, k.size) for k in found], np.float32).reshape(-1, 4)
        points[:, 3] = np.log2(points[:, 3])
        if desc is None:
            return points, np.zeros((0, 128), np.uint8)
        return points, desc.astype(np.uint8)  # OpenCV's values are whole numbers 0-255

    with one_thread_per_worker(), ThreadPoolExecutor(max_workers=workers) as pool:
        out = list(pool.map(one, views, chunksize=64))
    return Keypoints([p for p, _ in out], [d for _, d in out], int(views.shape[-1]))


def word_vectors(
    kp: Keypoints, seed: int = 0, workers: int | None = None
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """(N, WORDS) sparse float32 visual-word vectors of each view as seen, and of its mirror,
    from raw SIFT keypoints (``extract``, not ``project``).

    Both unit norm (rows without keypoints are empty); a dot product is a cosine similarity.
    The vocabulary is closed under mirroring, so the mirrored vectors are the seen ones with
    their columns swapped: one assignment pass instead of two. ``workers`` threads assign
    ``ASSIGN_IMAGES`` images' descriptors each at a time (None: one per core).
    """
    n = len(kp.descriptors)
    counts = np.array([len(d) for d in kp.descriptors], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])  # descriptor m of the set: image, row
    total = int(starts[-1])
    if total == 0:
        empty = sparse.csr_matrix((n, WORDS), dtype=np.float32)
        return empty, empty.copy()
    rng = np.random.default_rng(seed)
    vocabulary = Vocabulary.fit(_sample(kp, starts, rng), rng)
    nearest = np.empty((total, 2), np.int64)  # the second word counts half

    def assign(first: int) -> None:  # no copy of the whole set's descriptors
        last = min(n, first + ASSIGN_IMAGES)
        if starts[last] > starts[first]:
            chunk = np.concatenate(kp.descriptors[first:last])  # (M, 128) uint8
            nearest[starts[first] : starts[last]] = vocabulary.assign(chunk)

    # Threads, not BLAS's own: most of an assignment is argmax passes and one small product
    # per coarse word, which run on the calling thread.
    with one_thread_per_worker(), ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(assign, range(0, n, ASSIGN_IMAGES)))
    owner = np.repeat(np.arange(n), counts)
    weights = np.repeat(np.float32([1.0, 0.5]), total)
    seen = sparse.csr_matrix(
        (weights, (np.tile(owner, 2), nearest.T.ravel())), shape=(n, WORDS), dtype=np.float32
    )  # duplicates are summed
    mirrored = seen[:, vocabulary.mirror_word]
    df = np.bincount((seen + mirrored).indices, minlength=WORDS)
    idf = np.log((n + 1) / (1 + df)).astype(np.float32)

    def unit(h: sparse.csr_matrix) -> sparse.csr_matrix:
        h = h.copy()
        h.data = np.sqrt(h.data) * idf[h.indices]  # square root: one busy word does not drown
        norms = np.sqrt(np.asarray(h.multiply(h).sum(axis=1), np.float32).ravel())
        h.data /= np.maximum(np.repeat(norms, np.diff(h.indptr)), 1e-6)
        return h

    return unit(seen), unit(mirrored)


def project(kp: Keypoints, dims: int = MATCH_DIMS, seed: int = 0) -> Keypoints:
    """Raw SIFT keypoints -> the same keypoints with RootSIFT descriptors projected on their
    ``dims`` principal axes, unit norm: cheaper to match (``verify.py``).

    The axes are fitted (uncentred: they keep dot products) on a seeded sample of the set's
    own descriptors, separately in the mirror-symmetric and the mirror-antisymmetric half of
    descriptor space, so each axis is either: a mirrored patch's projection is its
    projection with the antisymmetric coordinates negated (``Keypoints.flip``), exactly.
    """
    counts = np.array([len(d) for d in kp.descriptors], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    if starts[-1] == 0:  # no keypoints anywhere: nothing to fit
        empty = [np.zeros((0, dims), np.float32) for _ in counts]
        return Keypoints(kp.points, empty, kp.size, np.ones(dims, np.float32))
    sample = _sample(kp, starts, np.random.default_rng(seed))
    # bin i and its mirror bin MIRROR[i] (every bin has another: the mirror reverses the
    # four rows of the 4x4 grid, so no bin is its own)
    pairs = np.flatnonzero(np.arange(128) < MIRROR)
    axes, spread, flips = [], [], []
    for sign in (1.0, -1.0):  # (e_i + e_mirror) / sqrt 2, then (e_i - e_mirror) / sqrt 2
        half = np.zeros((128, len(pairs)))
        half[pairs, np.arange(len(pairs))] = np.sqrt(0.5)
        half[MIRROR[pairs], np.arange(len(pairs))] = sign * np.sqrt(0.5)
        inside = sample @ half
        values, vectors = np.linalg.eigh(inside.T @ inside)
        axes.append(half @ vectors)
        spread.append(values)
        flips.append(np.full(len(values), sign))
    top = np.argsort(-np.concatenate(spread), kind="stable")[:dims]
    top = top[np.argsort(top >= len(pairs), kind="stable")]  # symmetric axes first (``dots``)
    basis = np.concatenate(axes, axis=1)[:, top].astype(np.float32)  # (128, dims)
    out = []
    for first in range(0, len(counts), ASSIGN_IMAGES):  # bounded temporaries
        chunk = kp.descriptors[first : first + ASSIGN_IMAGES]
        moved = _root(np.concatenate(chunk)) @ basis
        moved /= np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-6)
        out.extend(np.split(moved, np.cumsum([len(d) for d in chunk])[:-1]))
    return Keypoints(kp.points, out, kp.size, np.concatenate(flips)[top].astype(np.float32))


def _sample(kp: Keypoints, starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(M, 128) RootSIFT: up to ``SAMPLE`` descriptors of the set drawn at random (seeded);
    ``starts``: (N + 1,) where each image's descriptors begin in the whole set."""
    picked = rng.choice(int(starts[-1]), min(SAMPLE, int(starts[-1])), replace=False)
    image = np.searchsorted(starts, picked, side="right") - 1
    rows = picked - starts[image]
    return _root(np.stack([kp.descriptors[i][r] for i, r in zip(image, rows, strict=True)]))


@dataclass(frozen=True)
class Vocabulary:
    """A two-level vocabulary tree closed under mirroring (``WORDS`` words).

    ``COARSE`` coarse words (half k-means centres, half their mirror images), each with up
    to ``FINE`` fine words fitted on the descriptors that fall in it; word = coarse * FINE +
    fine. The mirror of coarse word c's fine words are the fine words of c's mirror.
    """

    coarse: np.ndarray  # (COARSE, 128) RootSIFT centres
    fine: np.ndarray  # (COARSE, FINE, 128) centres under each coarse word
    fine_count: np.ndarray  # (COARSE,) int: fine words fitted (a sparse cell has fewer)
    mirror_word: np.ndarray  # (WORDS,) int: the word of the mirrored descriptor

    @classmethod
    def fit(cls, sample: np.ndarray, rng: np.random.Generator) -> Vocabulary:
        """Fit on (M, 128) RootSIFT descriptors (seeded)."""
        half = COARSE // 2
        fitted = _kmeans(sample, min(half, len(sample)), rng)
        fitted = np.concatenate([fitted, np.repeat(fitted[-1:], half - len(fitted), axis=0)])
        coarse = np.concatenate([fitted, fitted[:, MIRROR]])
        owner = _nearest(sample, coarse)
        fine = np.zeros((COARSE, FINE, 128), np.float32)
        fine_count = np.zeros(COARSE, np.int64)
        for c in range(half):  # a cell's members, and its mirror cell's members mirrored
            members = np.concatenate([sample[owner == c], sample[owner == c + half][:, MIRROR]])
            if len(members) == 0:
                members = coarse[c : c + 1]
            k = min(FINE, len(members))
            fine[c, :k] = _kmeans(members, k, rng, rounds=6)
            fine[c + half, :k] = fine[c, :k][:, MIRROR]
            fine_count[c] = fine_count[c + half] = k
        mirror_coarse = np.concatenate([np.arange(half, COARSE), np.arange(half)])
        mirror_word = (mirror_coarse[:, None] * FINE + np.arange(FINE)).ravel()
        return cls(coarse, fine, fine_count, mirror_word)

    def assign(self, desc: np.ndarray) -> np.ndarray:
        """(M, 128) raw SIFT descriptors (any scale) -> (M, 2) words: the nearest fine word of the
        nearest coarse word, and the second nearest fine word there."""
        desc = _root(desc)  # RootSIFT once, for both levels
        top = _nearest(desc, self.coarse)
        order = np.argsort(top, kind="stable")
        edges = np.searchsorted(top[order], np.arange(COARSE + 1))
        words = np.empty((len(desc), 2), np.int64)
        for c in range(COARSE):  # one product per coarse word, with its fine words
            rows = order[edges[c] : edges[c + 1]]
            if len(rows):  # a cell with one fine word gives it twice
                centres = self.fine[c, : self.fine_count[c]]
                words[rows] = c * FINE + _nearest(desc[rows], centres, 2)
        return words


def _root(desc: np.ndarray) -> np.ndarray:
    """(M, 128) SIFT, any scale -> (M, 128) float32 RootSIFT: sqrt of the L1-normalised
    descriptor (unit L2 norm)."""
    desc = desc.astype(np.float32, copy=False)
    out = desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(out, out=out)


def _nearest(desc: np.ndarray, centres: np.ndarray, count: int = 1) -> np.ndarray:
    """(M, 128) descriptors -> (M, count) indices of the nearest (K, 128) centres, the
    nearest first; (M,) when count is 1."""
    words = np.empty((len(desc), count), np.int64)
    half = (centres * centres).sum(axis=1) / 2
    for start in range(0, len(desc), 65536):  # bounded temporaries
        chunk = desc[start : start + 65536]
        scores = chunk @ centres.T
        scores -= half
        rows = np.arange(len(scores))
        for rank in range(count):  # argmax passes: far cheaper than a partial sort
            words[start + rows, rank] = best = np.argmax(scores, axis=1)
            scores[rows, best] = -np.inf
    return words[:, 0] if count == 1 else words


def _kmeans(sample: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 8) -> np.ndarray:
    """(k, 128) centres of (M, 128) descriptors (Lloyd's rounds from a seeded start, BLAS)."""
    centres = sample[rng.choice(len(sample), k, replace=False)].copy()
    for _ in range(rounds):
        words = _nearest(sample, centres)
        order = np.argsort(words, kind="stable")
        counts = np.bincount(words, minlength=k)
        filled = counts > 0
        starts = np.cumsum(counts) - counts
        sums = np.add.reduceat(sample[order], starts[filled], axis=0)
        centres[filled] = sums / counts[filled, None]
    return centres.astype(np.float32)
