"""One pass over image files: fingerprints, views, digests, errors."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from scalpnet.data import fingerprints
from scalpnet.data.fingerprints import DETAIL_SIZE, FP_DIM, VIEW_SIZE, Scan
from scalpnet.errors import InvalidImageError


def photo(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return cv2.resize(small, (200, 160), interpolation=cv2.INTER_CUBIC)


def test_fingerprint_and_view_shapes_and_colour_blindness():
    rgb = photo(1)
    fp, v = fingerprints.fingerprint(rgb), fingerprints.view(rgb)
    assert fp.shape == (FP_DIM,) and fp.dtype == np.float32
    assert v.shape == (VIEW_SIZE, VIEW_SIZE) and v.dtype == np.uint8
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_allclose(fingerprints.fingerprint(grey), fp, atol=1e-3)
    assert np.array_equal(fingerprints.view(grey), v)


def test_scan_of_files_matches_scan_of_images(tmp_path):
    images = [photo(2), photo(3)]
    paths = []
    for k, rgb in enumerate(images):
        paths.append(tmp_path / f"{k}.png")
        cv2.imwrite(str(paths[-1]), rgb[:, :, ::-1])
    from_files, in_memory = fingerprints.scan(paths, workers=2), Scan.of_images(images)
    np.testing.assert_array_equal(from_files.views, in_memory.views)
    np.testing.assert_array_equal(from_files.details, in_memory.details)
    assert from_files.details.shape == (2, DETAIL_SIZE, DETAIL_SIZE)
    np.testing.assert_allclose(from_files.fingerprints, in_memory.fingerprints)
    assert from_files.pixel_digests == in_memory.pixel_digests
    only = from_files.subset([1])
    assert only.pixel_digests == [in_memory.pixel_digests[1]]
    np.testing.assert_array_equal(only.details, in_memory.details[1:])


def test_exact_duplicates_same_bytes_and_same_pixels(tmp_path, real_scalp_dir):
    rgb = photo(5)
    first, second, third = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    cv2.imwrite(str(first), rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(second), rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    shutil.copy(first, third)
    web = real_scalp_dir / "web_alopecia_alopecia-areata-45.jpg"
    twin = real_scalp_dir / "web_alopecia_alopecia-areata-46.jpg"
    found = fingerprints.exact_duplicates([first, second, third, web, twin])
    assert found["same_bytes"] == [[0, 2], [3, 4]]
    assert found["same_pixels"] == [[0, 1, 2], [3, 4]]


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    found = fingerprints.scan([bad])
    assert "broken.png" in found.errors[0] and not found.views.any() and not found.details.any()
    with pytest.raises(InvalidImageError, match=r"broken\.png"):
        fingerprints.scan_strict([bad])
