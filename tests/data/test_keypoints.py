"""SIFT keypoints, their exact mirror image, and visual-word vectors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from scalpnet.data import copies, keypoints, verify
from scalpnet.data.fingerprints import view
from scalpnet.data.preprocess import load_image, to_model_input


def textured(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    return view(cv2.resize(small, (96, 96), interpolation=cv2.INTER_CUBIC))


def test_mirrored_keypoints_equal_detection_on_the_mirrored_view():
    """Position, orientation, size and descriptor of each mirrored keypoint."""
    v = textured(0)
    seen = keypoints.extract(v[None], workers=1)
    detected = keypoints.extract(np.ascontiguousarray(v[None, :, ::-1]), workers=1)
    points, desc = seen.get(0, mirrored=True)
    desc = seen.unit(desc)
    other_points, other_desc = detected.get(0)
    other_desc = detected.unit(other_desc)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    matched = 0
    for p, d in zip(points, desc, strict=True):  # p: x, y, orientation, log2 size
        here = np.linalg.norm(other_points[:, :2] - p[:2], axis=1) < 0.2
        turn = np.abs((other_points[:, 2] - p[2] + 180) % 360 - 180)  # a point may carry two
        here &= (turn < 10) & (np.abs(other_points[:, 3] - p[3]) < 0.1)
        if here.any():
            matched += np.linalg.norm(other_desc[here] - d, axis=1).min() < 0.25
    assert matched >= 0.8 * len(points) > 10


def test_raw_descriptors_are_opencvs_as_bytes():
    """A quarter of float32's memory and nothing lost: OpenCV's values are whole, 0-255."""
    views = np.stack([textured(s) for s in range(3)])
    kp = keypoints.extract(views, workers=1)
    sift = cv2.SIFT_create(nfeatures=keypoints.FEATURES, contrastThreshold=keypoints.CONTRAST)
    for grey, desc in zip(views, kp.descriptors, strict=True):
        _, expected = sift.detectAndCompute(grey, None)
        assert desc.dtype == np.uint8 and len(desc) > 10
        np.testing.assert_array_equal(desc, expected)  # float32 vs uint8, value for value
    unit = kp.unit(kp.descriptors[0])
    assert unit.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_word_vectors_are_unit_and_see_a_copy_as_its_photo():
    views = np.stack([textured(s) for s in range(6)] + [np.ascontiguousarray(textured(0)[:, ::-1])])
    seen, mirrored = keypoints.word_vectors(keypoints.extract(views, workers=1))
    assert seen.shape == mirrored.shape == (7, keypoints.WORDS)
    for vectors in (seen, mirrored):
        np.testing.assert_allclose(np.sqrt(vectors.multiply(vectors).sum(axis=1)), 1.0, atol=1e-5)
    to_mirror = (seen[0] @ mirrored.T).toarray().ravel()  # the flipped copy, seen mirrored,
    assert int(np.argmax(to_mirror)) == 6  # is the photo itself


def test_word_vectors_do_not_depend_on_how_many_threads_assign_them(monkeypatch):
    kp = keypoints.extract(np.stack([textured(s) for s in range(7)]), workers=1)
    monkeypatch.setattr(keypoints, "ASSIGN_IMAGES", 2)  # four chunks for the threads
    one = keypoints.word_vectors(kp, workers=1)
    three = keypoints.word_vectors(kp, workers=3)
    for a, b in zip(one, three, strict=True):
        assert (a != b).nnz == 0 and a.nnz > 0


def test_a_turned_and_zoomed_copy_finds_its_real_photo_among_its_best_word_partners(
    real_photo_paths,
):
    """The words' job: rotations by any angle with a zoom, which the DCT views miss."""
    paths = real_photo_paths[::4][:50]
    photos = [to_model_input(load_image(p), 256) for p in paths]
    rng = np.random.default_rng(0)
    copies_of = list(range(0, 50, 5))
    planted = [copies.plant(photos[k], rng, ("rotate", "zoom"))[0] for k in copies_of]
    views = np.stack([view(rgb) for rgb in photos + [to_model_input(c, 256) for c in planted]])
    seen, mirrored = keypoints.word_vectors(keypoints.extract(views, workers=1))
    scores = np.maximum((seen @ seen.T).toarray(), (seen @ mirrored.T).toarray())
    np.fill_diagonal(scores, -1)
    found = [k in np.argsort(-scores[50 + c])[:8] for c, k in enumerate(copies_of)]
    assert sum(found) >= 8, found  # the photo among the copy's 8 best of 59


def test_the_vocabulary_gives_a_mirrored_descriptor_the_mirror_of_its_word():
    """Closed under mirroring: the mirrored vectors are the seen ones, columns swapped."""
    kp = keypoints.extract(np.stack([textured(s) for s in range(40)]), workers=1)
    every = np.concatenate(kp.descriptors)
    rng = np.random.default_rng(0)
    vocabulary = keypoints.Vocabulary.fit(keypoints._root(every.copy()), rng)
    words = vocabulary.assign(every)  # (M, 2)
    mirrored = vocabulary.assign(np.ascontiguousarray(every[:, keypoints.MIRROR]))
    assert words.shape == (len(every), 2) and words.max() < keypoints.WORDS
    assert (words[:, 0] != words[:, 1]).mean() > 0.9  # a second word, not the first again
    same = vocabulary.mirror_word[words[:, 0]] == mirrored[:, 0]
    assert same.mean() > 0.99  # float rounding may break an exact tie
    twice = vocabulary.mirror_word[vocabulary.mirror_word]
    assert np.array_equal(twice, np.arange(keypoints.WORDS))


def test_a_mirrored_patch_projects_to_the_projection_with_signs_flipped():
    """Each projected axis is mirror-symmetric or antisymmetric, so the mirror is exact."""
    raw = keypoints.extract(np.stack([textured(s) for s in range(30)]), workers=1)
    flipped = [np.ascontiguousarray(d[:, keypoints.MIRROR]) for d in raw.descriptors]
    both = keypoints.Keypoints(raw.points * 2, raw.descriptors + flipped, raw.size)
    projected = keypoints.project(both, dims=24)
    assert set(np.unique(projected.flip).tolist()) == {-1.0, 1.0}
    for seen, mirror in zip(projected.descriptors[:30], projected.descriptors[30:], strict=True):
        assert seen.shape == (len(seen), 24)
        np.testing.assert_allclose(np.linalg.norm(seen, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(projected.mirrored(seen), mirror, atol=1e-5)
    points, desc = projected.get(0, mirrored=True)  # a view's mirror, from its keypoints
    np.testing.assert_allclose(desc, projected.descriptors[30], atol=1e-5)
    np.testing.assert_array_equal(points, raw.mirror(raw.points[0]))


def test_dots_with_the_mirrored_descriptors_equal_their_products():
    """Projected (symmetric axes first, shared halves) and raw (the permutation) alike."""
    raw = keypoints.extract(np.stack([textured(s) for s in range(6)]), workers=1)
    projected = keypoints.project(raw, dims=24)
    flip = projected.flip
    assert np.all(np.diff(flip) <= 0)  # the +1 axes first
    for kp in (raw, projected):
        a, others = kp.descriptors[0], np.concatenate(kp.descriptors[1:])
        unit_a, unit_others = kp.unit(a), kp.unit(others)
        expected = unit_a @ np.concatenate([unit_others, kp.mirrored(unit_others)]).T
        got = kp.dots(a, others)
        assert got.shape == (len(a), 2 * len(others)) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="first"):
        keypoints.Keypoints(projected.points, projected.descriptors, 160, flip[::-1].copy())


def test_projection_keeps_the_nearest_descriptor_of_a_clear_match():
    """48 axes of RootSIFT: a descriptor of a turned, zoomed view whose nearest descriptor
    of the view stands out (Lowe's ratio test) still finds it after projection."""
    views = [textured(s) for s in range(20)]
    m = cv2.getRotationMatrix2D((47.5, 47.5), 30, 1.2)
    turned = [cv2.warpAffine(v, m, (96, 96), borderMode=cv2.BORDER_REFLECT) for v in views]
    raw = keypoints.extract(np.stack(views + turned), workers=1)
    projected = keypoints.project(raw)
    split = sum(len(d) for d in raw.descriptors[:20])
    root = keypoints._root(np.concatenate(raw.descriptors))
    kept = np.concatenate(projected.descriptors)
    assert kept.shape == (len(root), keypoints.MATCH_DIMS)
    query, nearest = verify.ratio_test(root[:split] @ root[split:].T)
    assert len(query) > 100
    after = np.argmax(kept[split:][query] @ kept[:split].T, axis=1)
    assert (after == nearest).mean() > 0.95


def test_projecting_no_keypoints_gives_empty_descriptors():
    flat = np.full((2, 64, 64), 128, np.uint8)  # nothing to detect
    projected = keypoints.project(keypoints.extract(flat, workers=1))
    assert [d.shape for d in projected.descriptors] == [(0, keypoints.MATCH_DIMS)] * 2
