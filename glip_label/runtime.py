"""Process-wide settings that make CPU inference faster; the CLI applies them at start-up.

Kept out of the model and the predictor on purpose: they change the whole process (every library in it),
so a program that imports glip-label decides for itself whether to call them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_FREED_BYTES = 2**31 - 1  # the largest int mallopt takes: free heap above this is returned to the OS
OPT_OUT_ENV = "GLIP_LABEL_DEFAULT_MALLOC"


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse the memory of large freed tensors instead of unmapping and faulting it in again.

    Why: glibc serves large allocations with mmap and unmaps them on free, so every large intermediate of a
    forward pass (GLIP-T's fusion maps are [20k, 1.5k] floats, 124 MB, at 800x1200 with 80 classes) costs
    its size in fresh zeroed pages, every pass: about a fifth of the CPU latency (benchmarks/README.md).
    With mmap off (M_MMAP_MAX = 0) large blocks come from the heap, and a high M_TRIM_THRESHOLD keeps the
    freed heap for the next pass. What is kept is what a pass used, so peak RSS stays where it was (GLIP-T at
    800x1200: 2.26-2.35 GB, 2.25-2.37 GB before).

    Returns True when applied: Linux with glibc, and GLIP_LABEL_DEFAULT_MALLOC unset (set it to 1 to keep
    the default allocator). Elsewhere it does nothing and returns False.
    """
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    log.debug("malloc keeps freed memory: %s", applied)
    return applied


__all__ = ["keep_freed_memory"]
