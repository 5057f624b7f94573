"""The merge's per-update work on worker threads.

Most of a validated merge is independent per upload: the robust screen's checks of each update
(its change statistics, the cloud's reference fine-tune for it, its sub-model's accuracy and loss
on its own classes before and after; then, per merge unit, the medians of the round's changes)
and each candidate's per-device evaluations. The merge runs them on ``merge.workers`` threads,
each with one torch thread: torch releases the GIL inside its kernels, though not in the Python
around them, which on small models is much of the work. On the 2-core development machine a
64-upload merge ran 1.35x faster on two workers than on one (evaluations with norm re-estimation
alone 1.34x, reference fine-tunes 1.75x; docs/scaling.md). Results come back in input order and
every item is computed as it would be serially (its own seeded generators, its own model copies),
so the merge's decisions do not depend on the number of workers (tests/unit/test_merge_workers.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(configured: int | None) -> int:
    """``merge.workers``: the configured count, or (``None``) the cores available to the process."""
    return configured if configured is not None else available_cores()


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``workers`` threads, in input order.

    While the threads run, torch's intra-op pool is set to one thread (the workers are the
    parallelism), then restored. ``fn`` must not share mutable state across items except through
    thread-safe structures (:class:`PerThread` gives each thread its own). An exception raised by
    ``fn`` propagates (the first in input order) after all items finished.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="eclm-merge") as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


class PerThread(Generic[T]):
    """One object per thread, made by ``factory`` on a thread's first :meth:`get` (e.g. a sub-model
    cache whose models a thread recalibrates in place, which another thread must not see).

    Args:
        factory: Makes a thread's object.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self.factory = factory
        self._objects: dict[int, T] = {}

    def get(self) -> T:
        """This thread's object (each thread writes only its own key, so no lock is needed)."""
        ident = threading.get_ident()
        obj = self._objects.get(ident)
        if obj is None:
            obj = self._objects[ident] = self.factory()
        return obj


__all__ = ["PerThread", "available_cores", "parallel_map", "resolve_workers"]
