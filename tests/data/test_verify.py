"""The pair score: high for a copy under any transform, near 0 for another photo."""

from __future__ import annotations

import cv2
import numpy as np

from scalpnet.data import copies, verify
from scalpnet.data.preprocess import to_model_input


def photo(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return to_model_input(cv2.resize(small, (300, 300), interpolation=cv2.INTER_CUBIC), 256)


def test_same_pixels_score_one_and_another_photo_near_zero():
    a, b = photo(1), photo(2)
    assert verify.similarity(a, a) > 0.99
    assert verify.similarity(a, b) < 0.2


def test_every_family_of_copy_scores_above_the_default_threshold():
    from scalpnet.data.grouping import DEFAULT_THRESHOLD

    a = photo(3)
    for name in copies.FAMILIES:
        copy, _ = copies.plant(a, np.random.default_rng(4), (name,))
        score = verify.similarity(a, to_model_input(copy, 256))
        assert score >= DEFAULT_THRESHOLD, (name, score)
        other_way = verify.similarity(to_model_input(copy, 256), a)
        assert abs(other_way - score) < 0.05, (name, score, other_way)
