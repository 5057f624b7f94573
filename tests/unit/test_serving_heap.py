"""A stage process keeps its large buffers mapped between micro-batches (eclm/serving/heap.py).

``retain_heap`` changes the whole process for good, so each measurement runs in a fresh
interpreter: it allocates and touches four 4 MiB blocks at once and frees them, as a forward pass
at 128 px frees its activations, and counts the minor page faults of the repeats after a warm-up.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eclm.serving.heap import retain_heap

_PROBE = r"""
import ctypes, ctypes.util, json, resource, sys
from eclm.serving.heap import retain_heap
took = retain_heap(int(sys.argv[1]))
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 4 * 2**20

def micro_batch():
    blocks = [libc.malloc(size) for _ in range(4)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks:
        libc.free(b)

for _ in range(3):
    micro_batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    micro_batch()
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(retain_bytes: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(retain_bytes)], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retained_heap_stops_refaulting_freed_buffers():
    kept, default = _faults(64 * 2**20), _faults(0)
    assert kept["took"] and not default["took"]
    # 10 micro-batches of 16 MiB touched: 40,960 pages if every one were mapped afresh
    assert kept["faults"] <= 64
    assert default["faults"] > 10 * kept["faults"] + 1000


def test_zero_changes_nothing_and_negative_is_refused():
    assert retain_heap(0) is False
    with pytest.raises(ValueError, match="retain_bytes"):
        retain_heap(-1)
