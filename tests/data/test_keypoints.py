"""SIFT keypoints, their exact mirror image, and visual-word vectors."""

from __future__ import annotations

import cv2
import numpy as np

from scalpnet.data import keypoints
from scalpnet.data.fingerprints import view


def textured(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    return view(cv2.resize(small, (96, 96), interpolation=cv2.INTER_CUBIC))


def test_mirrored_descriptors_equal_detection_on_the_mirrored_view():
    v = textured(0)
    seen = keypoints.extract(v[None], workers=1)
    detected = keypoints.extract(np.ascontiguousarray(v[None, :, ::-1]), workers=1)
    points, desc = seen.get(0, mirrored=True)
    other_points, other_desc = detected.get(0)
    matched = 0
    for p, d in zip(points, desc, strict=True):
        here = np.linalg.norm(other_points - p, axis=1) < 0.2  # (a point may carry two angles)
        if here.any():
            gap = np.linalg.norm(other_desc[here] - d, axis=1).min() / np.linalg.norm(d)
            matched += gap < 0.25  # sub-pixel sampling differs a little
    assert matched >= 0.8 * len(points) > 10


def test_word_vectors_are_unit_and_see_a_copy_as_its_photo():
    views = np.stack([textured(s) for s in range(6)] + [np.ascontiguousarray(textured(0)[:, ::-1])])
    seen, mirrored = keypoints.word_vectors(keypoints.extract(views, workers=1))
    np.testing.assert_allclose(np.linalg.norm(seen, axis=1), 1.0, atol=1e-5)
    to_mirror = seen[0] @ mirrored.T  # the flipped copy, seen mirrored, is the photo itself
    assert int(np.argmax(to_mirror)) == 6
