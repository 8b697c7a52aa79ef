"""Keeping a serving process's resident memory near what it holds (glibc's allocator).

A long-lived server that allocates and frees large arrays (ONNX Runtime building its
session; each upload's photo, its CAM overlay and their float copies) can sit on far more
memory than it uses: glibc keeps freed heap pages, and after the first large block it
frees it serves blocks of that size from the heap instead of mapping them. Both helpers
are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value


def _glibc_function(name: str):
    """The C library's function ``name``, or None (not glibc; Windows has no CDLL(None))."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the operating system.

    Building a session parses the whole ONNX file and then rewrites the weights into the
    CPU's blocked layout; glibc keeps the freed originals. Measured for the fp32 ResNet50
    at 256 px: resident memory 296 -> 145 MiB after this call; int8: 102 -> 81 MiB.
    """
    trim = _glibc_function("malloc_trim")
    if trim is not None:
        trim(0)


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Give every allocation of ``threshold`` bytes or more its own mapping, for good.

    glibc maps such blocks at first, so freeing one returns it to the system, but each
    time a mapped block is freed it raises the threshold to that block's size (up to
    32 MiB). After that, photo-sized arrays (a 1024x768 RGB image as float32 is 9 MiB)
    come from the heap, stay resident when freed, and are spread over one heap per
    Streamlit session thread. Setting the threshold turns that adjustment off.
    ``python benchmarks/bench_app.py --image-size 256`` (9 sessions, each a photo and its
    CAM; 2026-12-04, one run before, two after): peak RSS 446 -> 355-356 MiB on fp32 ONNX,
    333 -> 278-287 MiB on int8, upload and CAM times within the run-to-run spread. The
    price, a fresh mapping per large block: a Keras training step in a process that set it
    took 5-7% longer in a one-off probe (batch 8 at 256 px), forward passes no longer.

    Returns:
        Whether the setting took (False where the C library is not glibc).
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold)))
