"""The ten signatures: one per condition, in label order, seeded, drawn around their centre."""

from __future__ import annotations

import numpy as np
import pytest

from scalpnet.data.synthetic_signatures import SIGNATURES, Region
from scalpnet.labels import CONDITIONS, NUM_CLASSES

SKIN = (210.0, 160.0, 120.0)
SIDE, RADIUS = 200, 50.0


def region() -> Region:
    """A (200, 200) flat-skin region with the signature's disc (radius 50) in its middle."""
    return Region(
        skin=np.full((SIDE, SIDE, 3), SKIN, np.float32),
        keep=np.ones((SIDE, SIDE), np.float32),
        cx=SIDE / 2,
        cy=SIDE / 2,
        radius=RADIUS,
        unit=4.0,
        angle=30.0,
        hair_rgb=np.float32([55, 38, 28]),
    )


def draw(condition: int, seed: int) -> np.ndarray:
    """(200, 200) bool: where the signature changed the skin, the hair or the overlays."""
    g = region()
    SIGNATURES[condition](g, np.random.default_rng(seed))
    on_top = g.skin.copy()
    for overlay in g.overlays:
        overlay(on_top)
    skin = np.abs(g.skin - np.float32(SKIN)).max(axis=2) > 1
    return skin | (g.keep < 1) | (np.abs(on_top - g.skin).max(axis=2) > 1)


def test_one_signature_per_condition_in_label_order():
    assert len(SIGNATURES) == NUM_CLASSES
    assert [f.__name__ for f in SIGNATURES] == [f"_{c.key}" for c in CONDITIONS]


def test_scatter_stays_in_its_disc():
    points = region().scatter(np.random.default_rng(0), 500, spread=0.5)  # (500, 2)
    assert points.shape == (500, 2)
    distance = np.hypot(points[:, 0] - SIDE / 2, points[:, 1] - SIDE / 2)
    assert distance.max() <= 0.5 * RADIUS and distance.min() < 0.1 * RADIUS


@pytest.mark.parametrize("condition", range(NUM_CLASSES))
def test_each_signature_is_seeded_visible_and_near_its_centre(condition):
    for seed in (0, 1):
        changed = draw(condition, seed)
        np.testing.assert_array_equal(changed, draw(condition, seed))
        assert changed.mean() > 0.02, CONDITIONS[condition].key
        ys, xs = np.nonzero(changed)
        # measured: at most 1.41 radii (telogen effluvium's long shed hairs)
        assert np.hypot(xs - SIDE / 2, ys - SIDE / 2).max() <= 2 * RADIUS
