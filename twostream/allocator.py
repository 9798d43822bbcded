"""Keep large CPU tensors on the heap: glibc ``mallopt`` for the tools' processes (Linux only).

glibc serves every allocation above its mmap threshold (at most 32 MB, however it adapts) with a fresh ``mmap`` and
returns it to the system on ``free``. A CPU training step allocates and frees tensors far above that (the quick
start's segmenter: 151-class logits at full resolution, 16 x 151 x 128 x 128 floats = 158 MB, and their gradients), so
every step faults ~660 MB of new pages in: measured on the 2-core development machine, 0.28-0.68 s of system time
per step of ``seg/quickstart.yaml`` (one thread), a third of the step's CPU time. With the threshold and the trim
threshold raised to 1 GB, freed blocks are reused and the page faults (and the system time) go to zero. This is what
PyTorch's CPU performance guide gets from jemalloc or tcmalloc, without a dependency.

The cost: a process keeps the memory of its peak (up to 1 GB of freed heap is not given back until it exits). Users
who set glibc's own ``MALLOC_*`` variables, or ``TWOSTREAM_MALLOC_TUNING=0``, keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
HEAP_LIMIT = 1 << 30  # allocations up to 1 GB come from the heap and are reused
TOP_PAD = 256 << 20  # the heap grows in steps of 256 MB


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (module docstring); returns whether it did."""
    if not sys.platform.startswith("linux") or os.environ.get("TWOSTREAM_MALLOC_TUNING", "1") == "0":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):  # the user tunes glibc themselves
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    ok = all(mallopt(option, ctypes.c_int(value)) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, HEAP_LIMIT), (_M_TRIM_THRESHOLD, HEAP_LIMIT), (_M_TOP_PAD, TOP_PAD)))
    log.debug("glibc malloc thresholds raised to %d MB: %s", HEAP_LIMIT >> 20, ok)
    return ok
