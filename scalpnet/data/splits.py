"""How N images are dealt into train/val/test: the counts, and a stratified random split.

The grouped (leak-free) split, which keeps near-duplicates together, is
``grouping.group_split``: it deals whole groups toward the same ratios.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scalpnet.data.layouts import SPLITS
from scalpnet.errors import ConfigError


def check_ratios(ratios: Sequence[float]) -> np.ndarray:
    """(3,) float64 train/val/test ratios, or a ConfigError (not three, negative, all 0)."""
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or np.any(r < 0) or r.sum() <= 0:
        raise ConfigError(f"ratios must be three non-negative numbers, got {tuple(ratios)}")
    return r


def split_counts(n: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    """Split ``n`` into train/val/test counts proportional to ``ratios``.

    Largest-remainder rounding: the counts sum to ``n`` and each is within one of exact.
    """
    r = check_ratios(ratios)
    exact = n * r / r.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    return int(counts[0]), int(counts[1]), int(counts[2])


def stratified_split(
    labels: np.ndarray, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 42
) -> list[str]:
    """A seeded train/val/test split, stratified by label combination.

    Args:
        labels: (N, 10) 0/1; each distinct row is one stratum.

    Returns:
        N split names. Within each stratum the counts follow :func:`split_counts`.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    splits = [""] * len(labels)
    strata: dict[bytes, list[int]] = {}
    for i, row in enumerate(labels.astype(np.uint8)):
        strata.setdefault(row.tobytes(), []).append(i)
    for stratum in sorted(strata):
        members = rng.permutation(strata[stratum])
        bounds = np.cumsum(split_counts(len(members), ratios))
        for part, split in zip(np.split(members, bounds[:2]), SPLITS, strict=True):
            for i in part:
                splits[int(i)] = split
    return splits
