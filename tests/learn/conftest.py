"""Fixtures of the learn tests: a cluster of worker processes that is always stopped."""

from __future__ import annotations

import pytest
from worker_cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    """Two workers on 127.0.0.1 (see :class:`worker_cluster.Cluster`), killed at the end."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
