"""glibc's allocator tuned so that the relay's memory follows its load back down.

By default glibc raises its mmap threshold each time a large block is freed, so that later
large blocks (a dict's table when it grows or is rebuilt, a long buffer) come from its heap,
which it keeps when they are freed. Under steady churn of the rules' windows that kept about
60 MB more than the data needed (``benchmarks/state_memory.py``: 302 MB against 239 MB for a
million live entries of each kind). A fixed threshold of 128 KiB returns every such block to
the system when it is freed; the relay benchmark shows no cost in throughput.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where the C library has no
    ``mallopt`` (musl, macOS) or refuses it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
