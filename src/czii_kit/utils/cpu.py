"""CPU speed-ups of training and inference that are process-wide, so they live outside the models."""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Stop glibc from returning large freed blocks to the OS after every step or run.

    3D conv backward allocates and frees big buffers each step, and inference a tomogram and its maps each
    run; with default thresholds each one page-faults them back in (measured ~25% of a CPU training step,
    1-4 s of a 9 s CPU prediction of a full-size tomogram). The process keeps its peak memory. No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 2**31 - 1)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
