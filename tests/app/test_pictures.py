"""The JPEGs the page shows: the picture itself, in a third of Streamlit's bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from scalpnet.app.pictures import DISPLAY_QUALITY, display_jpeg


def noisy_photo(height: int = 480, width: int = 640) -> np.ndarray:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3)).astype(np.float32)
    field = np.repeat(np.repeat(coarse, 32, 0), 32, 1)[:height, :width]
    return np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)


def test_the_page_gets_the_same_picture_in_fewer_bytes():
    rgb = noisy_photo()
    data = display_jpeg(rgb)
    shown = Image.open(io.BytesIO(data))
    assert shown.format == "JPEG" and shown.size == (640, 480) and shown.mode == "RGB"
    # What st.image would have sent for the array: quality 100.
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=100)
    streamlit_default = buffer.getvalue()
    assert len(data) < 0.6 * len(streamlit_default)

    def error(jpeg: bytes) -> float:  # mean absolute difference from the array, 0-255
        decoded = np.asarray(Image.open(io.BytesIO(jpeg)), np.float32)
        return float(np.abs(decoded - rgb.astype(np.float32)).mean())

    # Both lose this photo's colour noise to chroma subsampling (about 8.5 of 255); quality
    # 90 adds little to that (quality 75 would add 1.7; a flat grey picture errs by 65).
    assert error(data) < error(streamlit_default) + 1.5
    assert display_jpeg(rgb) == data  # the same bytes each rerun: one media file
    assert DISPLAY_QUALITY == 90


def test_not_an_rgb_picture_is_refused():
    with pytest.raises(ValueError, match="uint8 RGB"):
        display_jpeg(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        display_jpeg(np.zeros((8, 8, 3), np.float32))
