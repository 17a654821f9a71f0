"""glibc's malloc settings for processes that move large messages through Python.

Why: an Offset tunnel moves 60 KiB messages through several Python layers (framing, two Cap'n
Proto packings, encryption) in the nodes and in ``strelay``, and each layer allocates a fresh
buffer of that size and frees it microseconds later. With glibc's defaults the heap top is given
back to the kernel as soon as 128 KiB of it are free (the threshold grows only after a large block
was freed through ``munmap``), so the same pages were returned and faulted in again for every
few messages. Keeping up to 16 MiB of free heap and serving blocks up to 1 MiB from the heap made
one tunnel 1.25-1.4x faster and halved ``strelay``'s CPU per GB
(``python3 bench/offset_throughput.py --bytes 500000000 --rounds 2``: 175-179 -> 217-251 MiB/s,
strelay 2.9-3.4 -> 1.65-1.9 CPU s/GB, both nodes 6.0-6.2 -> 5.2-5.8; either setting alone gained
little or lost). The cost is at most 16 MiB of free heap a process keeps after a burst instead of
returning it.

The settings are ``mallopt`` calls at start, so they apply only on glibc, and an operator who sets
glibc's own variables (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``)
keeps exactly what they asked for.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable, Mapping

__all__ = ["MMAP_THRESHOLD", "OPERATOR_VARIABLES", "TRIM_THRESHOLD", "tune_allocator"]

#: ``mallopt`` parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 16 * 1024 * 1024
"""Free bytes at the heap top that glibc keeps instead of giving them back to the kernel."""
MMAP_THRESHOLD = 1024 * 1024
"""Blocks up to this size come from the heap, not from their own ``mmap``."""

OPERATOR_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
"""glibc's own settings: when one is present, the operator has chosen and nothing is changed."""

Mallopt = Callable[[int, int], int]


def _glibc_mallopt() -> Mallopt | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def tune_allocator(env: Mapping[str, str], mallopt: Mallopt | bool | None = True) -> str:
    """Apply the settings above; returns what happened, for a debug line.

    ``mallopt`` is the C function (found in the running process when True; tests pass a fake).
    """
    chosen = [name for name in OPERATOR_VARIABLES if env.get(name)]
    if chosen:
        return f"malloc left as set by {', '.join(chosen)}"
    fn = _glibc_mallopt() if mallopt is True else mallopt
    if not fn:
        return "malloc left alone (not glibc)"
    ok = fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    ok = fn(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and ok
    if not ok:
        return "malloc settings refused by the C library"
    return f"malloc: trim threshold {TRIM_THRESHOLD >> 20} MiB, mmap threshold {MMAP_THRESHOLD >> 20} MiB"
