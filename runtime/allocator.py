"""Keep freed activation memory in the process, as an inference runtime's arena does.

A run allocates each layer's result afresh (numpy and the native kernels both take memory from
the C library's malloc). glibc hands blocks over its mmap threshold back to the kernel on free
and trims the heap's top, so the next run page-faults the same megabytes in again: a BERT-base
layer at batch 8 spent half of its int8 GEMM time in those faults on a 2-core cloud VM. Raising
both thresholds once, when the first session is created, keeps the freed blocks for reuse;
resident memory then stays at the largest run's high-water mark, as with ONNX Runtime's arena.
Blocks above glibc's largest mmap threshold (32 MiB) would still be mapped afresh on every run
(a MobileNetV2 expansion layer at batch 8 writes 38.5 MB: its 1x1 convolution took 8.2 ms, 4.6
without the faults), so the main heap serves those too: threads' own arenas still map a block
that outgrows their 64 MiB heaps.

NIMBUS_MALLOC_TUNING=0 leaves the allocator alone (e.g. for a process that must give memory
back between rare large runs). Other C libraries (musl, macOS) have no mallopt: nothing is done.

The arrays of 1 KiB or more that a run makes also start on a cache line: malloc aligns them to
16 bytes only, and the vector kernels' 64-byte loads and stores then span two lines each. A Session sets numpy's
allocator for its run's arrays to CACHE_LINE_ALLOCATOR and restores the caller's after the run
(set_array_allocator; numpy keeps the choice per thread and context).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

from ._kernels import CACHE_LINE_ALLOCATOR, set_array_allocator

__all__ = ["CACHE_LINE_ALLOCATOR", "keep_freed_memory", "set_array_allocator"]

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# glibc's largest mmap threshold on 64-bit hosts: blocks above it are always mapped afresh.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory at the heap's top kept rather than returned to the kernel.
TRIM_THRESHOLD_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc once per process; True if it was tuned."""
    if not sys.platform.startswith("linux") or os.environ.get("NIMBUS_MALLOC_TUNING", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                and mallopt(M_MMAP_MAX, 0))
