"""One thread per worker: the audit's stages split their work between their own threads,
so the thread pools of BLAS and OpenCV underneath would only contend with them.

``python benchmarks/bench_dedupe.py --mode synthetic`` (12,000 images, 2 cores, quiet,
2026-12-04): with OpenCV's pool left at its default of one thread per core, 74.0 s end to
end; with it held to the calling thread, 71.0 s (keypoints 28.9 -> 27.1 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import cv2
from threadpoolctl import threadpool_limits  # comes with scikit-learn


@contextmanager
def one_thread_per_worker() -> Iterator[None]:
    """Within: BLAS and OpenCV run each call on the calling thread; both restored on exit."""
    before = cv2.getNumThreads()
    with threadpool_limits(limits=1, user_api="blas"):
        cv2.setNumThreads(1)
        try:
            yield
        finally:
            cv2.setNumThreads(before)
