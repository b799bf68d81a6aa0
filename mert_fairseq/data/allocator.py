"""Keep freed heap memory in data-loading processes (glibc malloc), so batches stop re-faulting pages.

A loader worker allocates and frees the same few buffers per clip and per batch (the window read, its
float32 copy, the stacked batch: ~1 MB per 5 s clip). glibc returns freed blocks above its mmap threshold
and a heap top above its trim threshold (128 KB / 256 KB by default, adjusted upwards only partly) to the
kernel, so the next batch faults every page in again: about 230 page faults per 5 s clip, measured at
close to half of a worker's CPU time (docs/performance.md, "Data loading at scale"). Raising both
thresholds keeps up to `trim_bytes` of freed memory in the process for reuse; forked workers inherit it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_done = False


def keep_freed_memory(trim_bytes: int = 256 << 20, mmap_bytes: int = 32 << 20) -> bool:
    """Raise glibc's trim and mmap thresholds for this process (and its future forks); False where the C
    library is not glibc or refuses. Idempotent."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, trim_bytes))
    if not _done:
        logger.info("mallopt refused: freed memory goes back to the kernel as usual")
    return _done
