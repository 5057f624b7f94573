"""Independent benchmark jobs in spawned worker processes (one torch thread each)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """``fn(*job)`` for every job, in ``workers`` spawned processes (0: one after another here).

    ``fn`` must be a module-level function and its arguments and result plain data (the job's
    config as JSON, numbers, dicts): they cross a process boundary of this benchmark run.

    Returns:
        The results in the order of ``jobs``.
    """
    if workers == 0 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    # spawn, not fork: the parent may hold torch's thread pool, which a forked child cannot use.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.result() for f in futures]
