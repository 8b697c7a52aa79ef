"""Label and probability arrays shared by the metric and evaluation tests."""

from __future__ import annotations

import numpy as np

from scalpnet.labels import NUM_CLASSES


def fixed_arrays(n: int = 60, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Mostly single-label rows, some multi-label rows, one label-free row; no Tinea Capitis."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, NUM_CLASSES), dtype=int)
    y[np.arange(n), rng.integers(0, NUM_CLASSES - 1, n)] = 1
    y[:8, 3] = 1  # multi-label rows
    y[8] = 0  # an image with no condition
    y[:, 9] = 0  # a condition with no positive image
    p = np.clip(0.55 * y + rng.uniform(0, 0.6, y.shape), 0, 1)
    p[10:12] = p[10:12, ::-1]  # a few confident mistakes
    return y, p
