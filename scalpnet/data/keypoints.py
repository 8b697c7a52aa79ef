"""SIFT keypoints of every view, as seen and mirrored, and their visual-word vectors.

SIFT is invariant to rotation by any angle, to scale and to brightness, but not to a
mirror: a flipped copy has other descriptors. Detecting again on the mirrored view would
double the cost; instead each descriptor is mirrored (its 4x4 spatial rows
reversed, its 8 orientation bins negated: within sampling error of detection on the mirror,
in tests/data/test_keypoints.py), each keypoint's x becomes ``S - 0.5 - x`` and its
orientation 180 degrees minus it.

Visual words: descriptors, as RootSIFT (the square root of the L1-normalised descriptor:
Hellinger distance, better for retrieval than L2 on raw SIFT), are assigned to the two
nearest of ``WORDS`` words (the second counts half): half of them k-means centres of a
seeded sample of the set's own descriptors, the other half their mirror images, so a
mirrored descriptor's word is the mirror of its word. Each image becomes an
L2-normalised, idf-weighted word histogram, as seen and mirrored (the same histogram with
its columns swapped: one assignment pass serves both). Two copies of one photo share many
words whatever their rotation, crop or colour: this finds candidates the 32x32 DCT views
miss (``benchmarks/bench_dedupe.py --mode real`` measures how many).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

FEATURES = 150  # SIFT keypoints per 96x96 view (about 75 survive on skin)
CONTRAST = 0.02  # SIFT contrast threshold (OpenCV's 0.04 finds too few on smooth skin)
WORDS = 1024  # visual vocabulary size
SAMPLE = 20_000  # descriptors the vocabulary is fitted on
_BINS = np.arange(128).reshape(4, 4, 8)
MIRROR = _BINS[::-1][:, :, (-np.arange(8)) % 8].ravel()  # descriptor of the mirrored patch


@dataclass(frozen=True)
class Keypoints:
    """SIFT keypoints of N views."""

    points: list[np.ndarray]  # N x (K, 4) float32: x, y, orientation (degrees), log2 of size
    descriptors: list[np.ndarray]  # N x (K, 128) float32, unit norm
    size: int  # view side, pixels

    def mirror(self, points: np.ndarray) -> np.ndarray:
        """(K, 4) keypoints of a view -> where SIFT finds them on its mirror image."""
        out = points.copy()
        out[:, 0] = self.size - 0.5 - out[:, 0]
        out[:, 2] = (180.0 - out[:, 2]) % 360.0  # a mirrored direction
        return out

    def get(self, i: int, mirrored: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(K, 4) keypoints and (K, 128) descriptors of view i, or of its mirror image."""
        points, desc = self.points[i], self.descriptors[i]
        if not mirrored:
            return points, desc
        return self.mirror(points), np.ascontiguousarray(desc[:, MIRROR])


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
            return points, np.zeros((0, 128), np.float32)
        return points, desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-6)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        out = list(pool.map(one, views, chunksize=64))
    return Keypoints([p for p, _ in out], [d for _, d in out], int(views.shape[-1]))


def word_vectors(kp: Keypoints, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, WORDS) float32 visual-word vectors of each view as seen, and of its mirror image.

    Both unit norm (rows without keypoints are zero); a dot product is a cosine similarity.
    The vocabulary is closed under mirroring (half the words are fitted, the other half
    are their mirror images), so the word of a mirrored descriptor is the mirror of its
    word, and the mirrored histogram is the seen one with its columns swapped: one
    assignment pass instead of two.
    """
    n = len(kp.descriptors)
    counts = [len(d) for d in kp.descriptors]
    every = np.concatenate([d for d in kp.descriptors if len(d)] or [np.zeros((0, 128))])
    every = every.astype(np.float32, copy=False)
    half = min(WORDS // 2, len(every))
    if half < 1:
        return np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32)
    rng = np.random.default_rng(seed)
    sample = _root(every[rng.choice(len(every), min(SAMPLE, len(every)), replace=False)])
    fitted = _kmeans(sample, half, rng)
    vocabulary = np.concatenate([fitted, fitted[:, MIRROR]])  # (2 * half, 128)
    k = len(vocabulary)
    mirror_word = np.concatenate([np.arange(half, k), np.arange(half)])
    nearest = _nearest(every, vocabulary, 2, root=True)  # (M, 2); the second counts half
    owner = np.repeat(np.arange(n), counts)
    cells = np.concatenate([owner * k + nearest[:, 0], owner * k + nearest[:, 1]])
    weights = np.repeat(np.float32([1.0, 0.5]), len(every))
    seen = np.bincount(cells, weights, n * k).reshape(n, k).astype(np.float32)
    mirrored = seen[:, mirror_word]
    idf = np.log((n + 1) / (1 + ((seen + mirrored) > 0).sum(axis=0))).astype(np.float32)

    def unit(h: np.ndarray) -> np.ndarray:
        h = np.sqrt(h) * idf  # square root: one busy word does not drown the rest
        return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-6)

    return unit(seen), unit(mirrored)


def _root(desc: np.ndarray) -> np.ndarray:
    """(M, 128) SIFT -> RootSIFT: sqrt of the L1-normalised descriptor (unit L2 norm)."""
    out = desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(out, out=out)


def _nearest(
    desc: np.ndarray, centres: np.ndarray, count: int = 1, root: bool = False
) -> np.ndarray:
    """(M, 128) descriptors (raw SIFT made RootSIFT on the way when ``root``) -> (M, count)
    indices of the nearest (K, 128) centres, the nearest first; (M,) when count is 1."""
    words = np.empty((len(desc), count), np.int64)
    half = (centres * centres).sum(axis=1) / 2
    for start in range(0, len(desc), 65536):  # bounded temporaries
        chunk = desc[start : start + 65536]
        scores = (_root(chunk) if root else chunk) @ centres.T
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
        sums = np.zeros_like(centres)
        np.add.at(sums, words, sample)
        counts = np.bincount(words, minlength=k)[:, None]
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    return centres.astype(np.float32)
