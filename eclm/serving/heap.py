"""Keep a stage process's activation buffers mapped between micro-batches.

glibc's ``malloc`` serves large blocks with ``mmap`` and returns free memory at the top of its
heap to the kernel once that exceeds a trim threshold; both thresholds follow the largest block
freed so far (up to 32 MiB). One forward pass at 128 px and a micro-batch of 8 frees several
activations of megabytes at once, more than the followed trim threshold, so every micro-batch maps
fresh pages and the kernel zero-fills each on first touch. Measured on the 2-core machine of
``docs/benchmarks.md`` (one thread, thread CPU time per forward with a pause and some unrelated
allocations between micro-batches, as a stage actor sees them): the serving suite's ResNet-18
(16-128 channels) at 128 px and micro-batch 8 took 4,064 minor page faults and 34.1 ms per
forward, 0 faults and 26.3 ms with the memory kept; MobileNetV3-small 1,616 faults and 15.6 ms
against 0 and 13.1 ms. At 32 px, or 128 px and micro-batch 1, no buffer reaches the thresholds
and nothing changes (0 faults either way).

:func:`retain_heap` fixes both thresholds for the process: blocks below a quarter of the retained
size come from the heap, and up to the retained size of free memory stays mapped, so a stage
holds up to that much more memory than it uses at a time. It is process-wide and cannot be
undone, which is why a stage actor (a process of its own) sets it and the platform's training
processes do not (their measured memory is a benchmark figure, and a device's adaptation at
32 px ran only 1-2% faster with it, within the noise of the measurement).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more (half its 64 MiB heap segment on 64-bit)
_MAX_INT = 2**31 - 1


def retain_heap(retain_bytes: int) -> bool:
    """Keep up to ``retain_bytes`` of freed memory mapped in this process (glibc ``mallopt``).

    Args:
        retain_bytes: Free bytes the heap keeps instead of returning them to the kernel; blocks
            below a quarter of it (at most 32 MiB) come from the heap. 0 changes nothing.

    Returns:
        Whether the C library took both settings: ``False`` for 0, off Linux, or with a C library
        without ``mallopt`` (musl); the process then runs as before, only slower at large
        activations.

    Raises:
        ValueError: If ``retain_bytes`` is negative.
    """
    if retain_bytes < 0:
        raise ValueError(f"retain_bytes must be >= 0, got {retain_bytes}")
    if retain_bytes == 0 or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_threshold = min(retain_bytes // 4, _MAX_MMAP_THRESHOLD)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, min(retain_bytes, _MAX_INT)))


__all__ = ["retain_heap"]
