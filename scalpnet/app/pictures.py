"""The pictures the page sends the browser: JPEGs of quality 90, not Streamlit's 100.

Given an array, ``st.image`` sends a JPEG of quality 100. A 1024x768 photo (the noisy
synthetic one of ``benchmarks/bench_inference.py``) is then 832 KiB and takes 14 ms to
encode on the AVX2-only EPYC VM; at quality 90 it is 271 KiB and takes 7.5 ms (PIL, one
run of ten each, 2026-12-04). The page shows two such pictures per photo (the photo and
its CAM overlay), and on a phone's connection their bytes are most of the wait.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

DISPLAY_QUALITY = 90  # JPEG quality of what the page shows


def display_jpeg(rgb: np.ndarray, quality: int = DISPLAY_QUALITY) -> bytes:
    """(H, W, 3) uint8 RGB -> the JPEG bytes the page shows (same size, ``quality``)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
