"""The train/val/test counts, the ratios' check and the stratified random split."""

from __future__ import annotations

import numpy as np
import pytest

from scalpnet.data.layouts import SPLITS
from scalpnet.data.splits import check_ratios, split_counts, stratified_split
from scalpnet.errors import ConfigError
from scalpnet.labels import NUM_CLASSES


@pytest.mark.parametrize("n", [0, 1, 2, 5, 9, 10, 11, 99, 1000])
def test_split_counts_sum_to_n_and_stay_within_one_of_exact(n):
    counts = split_counts(n)
    assert sum(counts) == n
    assert all(abs(c - n * r) < 1 for c, r in zip(counts, (0.8, 0.1, 0.1), strict=True))


@pytest.mark.parametrize("ratios", [(0.8, 0.2), (0.8, -0.1, 0.3), (0, 0, 0)])
def test_ratios_that_cannot_split_are_refused(ratios):
    with pytest.raises(ConfigError, match="three non-negative numbers"):
        check_ratios(ratios)


def test_stratified_split_by_label_combination():
    labels = np.zeros((60, NUM_CLASSES), np.uint8)
    labels[:40, 0] = 1
    labels[40:, [1, 2]] = 1  # a multi-label stratum
    splits = stratified_split(labels, seed=0)
    assert [splits[:40].count(s) for s in SPLITS] == [32, 4, 4]
    assert [splits[40:].count(s) for s in SPLITS] == [16, 2, 2]
    assert splits == stratified_split(labels, seed=0)
    assert splits != stratified_split(labels, seed=1)
