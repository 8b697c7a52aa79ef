"""Shared fixtures. Heavy ones (a trained tiny run) are session-scoped and built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# TensorFlow's C++ start-up chatter is not part of any test's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
REAL_SCALP = REPO.parent / "shared" / "fixtures" / "real_scalp"


@pytest.fixture(scope="session")
def real_scalp_dir() -> Path:
    """The 73 real photos and their manifest.csv (read-only)."""
    if not (REAL_SCALP / "manifest.csv").is_file():
        pytest.skip(f"real photo fixtures not found at {REAL_SCALP}")
    return REAL_SCALP
