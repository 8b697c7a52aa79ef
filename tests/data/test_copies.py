"""Kaggle-style copies: seeded, each family changes the photo the way it says."""

from __future__ import annotations

import numpy as np

from scalpnet.data import copies


def test_plant_is_seeded_and_stacks_two_or_three_families():
    rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    one, names = copies.plant(rgb, np.random.default_rng(5))
    again, same_names = copies.plant(rgb, np.random.default_rng(5))
    assert np.array_equal(one, again) and names == same_names and 2 <= len(names) <= 3
    for name in copies.FAMILIES:
        out, applied = copies.plant(rgb, np.random.default_rng(1), (name,))
        assert applied == (name,) and out.dtype == np.uint8 and out.ndim == 3
        assert out.shape != rgb.shape or not np.array_equal(out, rgb), name
    grey, _ = copies.plant(rgb, np.random.default_rng(1), ("grey",))
    assert np.array_equal(grey[:, :, 0], grey[:, :, 2])
    assert np.array_equal(copies.turn(rgb, 1), rgb[:, ::-1])
