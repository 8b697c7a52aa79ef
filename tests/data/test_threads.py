import cv2
import pytest
from threadpoolctl import threadpool_info

from scalpnet.data.threads import one_thread_per_worker


@pytest.fixture
def three_opencv_threads():
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    yield
    cv2.setNumThreads(before)


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_one_thread_inside_and_the_pools_restored_after(three_opencv_threads):
    blas_before = _blas_threads()
    with one_thread_per_worker():
        assert cv2.getNumThreads() == 1
        assert _blas_threads() <= {1}
    assert cv2.getNumThreads() == 3
    assert _blas_threads() == blas_before


def test_restored_when_the_work_fails(three_opencv_threads):
    with pytest.raises(RuntimeError), one_thread_per_worker():
        raise RuntimeError("a stage failed")
    assert cv2.getNumThreads() == 3
