"""scalpnet.serve.heap: freed large arrays leave the process's resident memory.

Each case runs in its own interpreter: the allocator settings are process-wide.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")
pytestmark = pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")

# Frees a 20 MiB array (glibc then raises its mapping threshold to 20 MiB), allocates
# 10 MiB with small blocks after it, frees it, and prints how much stayed resident.
PROBE = """
import sys
import numpy as np
from scalpnet.serve import heap

def rss_mib():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024

if "map" in sys.argv:
    assert heap.map_large_blocks()  # True: the setting took
first = np.ones(20 << 20, np.uint8)
del first
before = rss_mib()
photo = np.ones(10 << 20, np.uint8)
small = [np.ones(1000, np.uint8) for _ in range(100)]
del photo
held = rss_mib() - before
if "trim" in sys.argv:
    heap.release_freed_memory()
print(held, rss_mib() - before)
"""


def held_mib(*args: str) -> tuple[float, float]:
    """(MiB resident after freeing the 10 MiB array, MiB after the optional trim)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    ).stdout
    held, after = map(float, out.split())
    return held, after


def test_without_the_setting_a_freed_large_array_stays_resident_until_trimmed():
    held, after_trim = held_mib("trim")
    assert held >= 8  # glibc's own behaviour: what the setting is there to change
    assert after_trim <= 2


def test_with_the_setting_a_freed_large_array_leaves_at_once():
    held, _ = held_mib("map")
    assert held <= 2
