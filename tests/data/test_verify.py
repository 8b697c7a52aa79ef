"""The pair score: high for a copy under any transform, near 0 for another photo."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from scalpnet.data import copies, verify
from scalpnet.data.fingerprints import DETAIL_SIZE, VIEW_SIZE, Scan, view
from scalpnet.data.keypoints import extract, project
from scalpnet.data.preprocess import load_image, to_model_input


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


# --------------------------------------------------------------------------- ECC refinement
def real_views(paths: list[Path]) -> np.ndarray:
    """(len(paths), S, S) views of real photos, as prepare stores them."""
    return np.stack([view(to_model_input(load_image(p), 256)) for p in paths])


def verifier_of(views: np.ndarray) -> verify.Verifier:
    return verify.Verifier(views, extract(views, workers=1))


def test_refinement_recovers_an_alignment_a_few_pixels_off_on_a_real_photo(real_photo_paths):
    photo = real_views(real_photo_paths[:1])[0]
    side = photo.shape[0]
    # the copy: the centre of the photo zoomed 1.6x and turned by 23 degrees
    truth = cv2.getRotationMatrix2D((side / 2, side / 2), 23, 1.6)  # photo -> copy
    copy = cv2.warpAffine(photo, truth, (side, side), borderMode=cv2.BORDER_REFLECT)
    v = verifier_of(np.stack([photo, copy]))
    copy_on_photo = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))
    off = copy_on_photo @ np.array([[1.02, 0, 1.5], [0, 1.02, -1.5], [0, 0, 1]])
    assert v.correlation(0, 1, copy_on_photo) > 0.9  # the true alignment
    assert v.correlation(0, 1, off) < 0.6  # 1-2 px off: fine texture no longer lines up
    refined = v.refine(0, 1, off)
    assert v.correlation(0, 1, refined) > 0.9
    corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], float).T
    assert np.abs((refined @ corners) - (copy_on_photo @ corners)).max() < 0.5  # pixels


def test_keypoints_of_the_detail_views_align_the_smaller_views(real_photo_paths):
    """Keypoints come from 160 px detail views; the alignment is in the 96 px views' pixels."""
    photo = to_model_input(load_image(real_photo_paths[0]), 256)
    truth = cv2.getRotationMatrix2D((128, 128), 37, 1.5)  # photo -> copy, 256 px
    copy = cv2.warpAffine(photo, truth, (256, 256), borderMode=cv2.BORDER_REFLECT)
    scanned = Scan.of_images([photo, copy])
    assert scanned.details.shape[-1] == DETAIL_SIZE > scanned.views.shape[-1]
    v = verify.Verifier(scanned.views, extract(scanned.details, workers=1))
    found = v.match(0, 1)
    assert found.score > 0.9
    k = VIEW_SIZE / 256  # pixel centres: u = (x + 0.5) k - 0.5
    to_view = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]])
    expected = to_view @ np.linalg.inv(np.vstack([truth, [0, 0, 1]])) @ np.linalg.inv(to_view)
    corners = np.array([[20, 20, 1], [75, 20, 1], [20, 75, 1], [75, 75, 1]], float).T
    assert np.abs(found.matrix @ corners - expected @ corners).max() < 0.5  # view pixels


def test_refinement_does_not_make_different_real_photos_match(real_photo_paths):
    views = real_views(real_photo_paths[:12])
    v = verifier_of(views)
    for a, b in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]:
        for matrix in (np.eye(3), cv2.getRotationMatrix2D((48, 48), 30, 1.3)):
            matrix = np.vstack([matrix[:2], [0, 0, 1]])
            aligned, _ = v.aligned(a, b, matrix)
            assert aligned is None or aligned < 0.3, (a, b, aligned)
        assert v.score(a, b) < 0.3


def test_a_degenerate_or_wild_transform_is_no_alignment(real_photo_paths):
    v = verifier_of(real_views(real_photo_paths[:2]))
    flat = np.array([[1.0, 2.0, 0.0], [0.5, 1.0, 0.0], [0, 0, 1]])  # determinant 0
    assert v.correlation(0, 1, flat) is None
    assert v.correlation(0, 1, np.diag([20.0, 20.0, 1.0])) is None  # a 20x zoom
    assert v.refine(0, 1, flat) is flat


# --------------------------------------------------------------------------- matching
def test_the_ratio_test_finds_what_opencv_brute_force_finds(real_photo_paths):
    kp = extract(real_views(real_photo_paths[:2]), workers=1)
    query, train = kp.unit(kp.descriptors[1]), kp.unit(kp.descriptors[0])
    rows, nearest = verify.ratio_test(train @ query.T)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(query, train, k=2)
    expected = [(m.queryIdx, m.trainIdx) for m, n in knn if m.distance < verify.RATIO * n.distance]
    assert list(zip(rows.tolist(), nearest.tolist(), strict=True)) == expected
    assert len(expected) > 5


def test_the_ratio_test_with_more_train_rows_than_a_byte_holds():
    """Its sums run in the smallest integer type that holds T: past 255 rows, 16 bits."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 8)).astype(np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    query = train[[7, 299, 150]] + rng.normal(0, 0.01, (3, 8)).astype(np.float32)
    query = np.concatenate([query, train[[20, 20]]])  # two queries with ties: no match
    train = np.concatenate([train, train[[20]]])  # row 300 repeats row 20
    rows, nearest = verify.ratio_test(train @ query.T)
    assert rows.tolist() == [0, 1, 2] and nearest.tolist() == [7, 299, 150]


def test_hough_peaks_count_matches_that_agree_on_one_pose():
    """Matches made by one similarity transform land together; random ones scatter."""
    rng = np.random.default_rng(0)
    m, size = 40, 96
    b = np.column_stack(
        [rng.uniform(0, size, (m, 2)), rng.uniform(0, 360, m), rng.uniform(1, 3, m)]
    )
    turn, zoom = 37.0, 0.8  # degrees, octaves
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), -turn, 2**zoom)  # b -> a
    a = b.copy()
    a[:, :2] = b[:, :2] @ matrix[:, :2].T + matrix[:, 2] + rng.normal(0, 0.5, (m, 2))
    a[:, 2] = b[:, 2] + turn + rng.normal(0, 3, m)
    a[:, 3] = b[:, 3] + zoom + rng.normal(0, 0.1, m)
    scattered = np.column_stack(
        [rng.uniform(0, size, (m, 2)), rng.uniform(0, 360, m), rng.uniform(1, 3, m)]
    )
    side_of = np.repeat([0, 1], m)
    peaks = verify.hough_peaks(side_of, np.vstack([b, b]), np.vstack([a, scattered]), 2, size)
    assert peaks[0] >= 0.8 * m  # a few fall in the neighbouring bins
    assert peaks[1] < verify.MIN_INLIERS


def with_a_copy_of_the_first(views: np.ndarray) -> np.ndarray:
    """(N, S, S) views -> (N + 1, S, S): the first turned by 41 degrees, zoomed 1.4x and
    flipped, last."""
    side = views.shape[1]
    m = cv2.getRotationMatrix2D((side / 2, side / 2), 41, 1.4)
    copy = cv2.warpAffine(views[0], m, (side, side), borderMode=cv2.BORDER_REFLECT)
    return np.concatenate([views, copy[None, :, ::-1]])


def test_a_real_copy_passes_the_pose_check_and_most_other_photos_do_not(real_photo_paths):
    v = verifier_of(with_a_copy_of_the_first(real_views(real_photo_paths[:13])))
    found = v.orientations(13, list(range(13)))
    assert [o.mirrored for o in found[0]][:1] == [True]
    assert sum(bool(f) for f in found[1:]) <= 3, [len(f) for f in found]


def test_projected_keypoints_verify_a_real_copy_as_the_raw_ones_do(real_photo_paths):
    """What find_groups matches with: RootSIFT on its principal axes (keypoints.project)."""
    views = with_a_copy_of_the_first(real_views(real_photo_paths[:13]))
    raw = extract(views, workers=1)
    by_raw, by_projection = verify.Verifier(views, raw), verify.Verifier(views, project(raw))
    assert by_projection.score(0, 13) > 0.9
    assert abs(by_projection.score(0, 13) - by_raw.score(0, 13)) < 0.05
    found = by_projection.orientations(13, list(range(1, 13)))
    assert sum(bool(f) for f in found) <= 3, [len(f) for f in found]


def test_matching_a_few_partners_at_a_time_finds_the_same_matches(real_photo_paths, monkeypatch):
    """An image with many partners is matched in slices of MATCH_ROWS descriptors: the
    same matches, and so the same orientations, as one product."""
    views = with_a_copy_of_the_first(real_views(real_photo_paths[:13]))
    v = verify.Verifier(views, project(extract(views, workers=1)))
    partners = list(range(13))
    whole = v._ratio_matches(v.keypoints.descriptors[13], partners)
    options = v.orientations(13, partners)
    monkeypatch.setattr(verify, "MATCH_ROWS", 300)  # about two partners of 160 at a time
    sliced = v._ratio_matches(v.keypoints.descriptors[13], partners)
    assert len(whole[0]) > 50
    for got, expected in zip(sliced, whole, strict=True):  # query order may differ
        np.testing.assert_array_equal(got[np.argsort(sliced[0])], expected[np.argsort(whole[0])])
    again = v.orientations(13, partners)
    assert [[(o.mirrored, len(o.src)) for o in f] for f in again] == [
        [(o.mirrored, len(o.src)) for o in f] for f in options
    ]
    assert any(again)
