"""Memory of the whole process tree (driver + Ray daemons + actors), sampled in the background.

Two sums are kept, because they answer different questions:

* **RSS** summed over processes: what ``psutil`` reports per process. Shared library pages
  (torch is ~300 MiB of them) are counted once *per process*, so this over-states real use when
  many worker processes load torch: an upper bound.
* **PSS** (proportional set size, ``/proc/<pid>/smaps_rollup``): each shared page is split among
  the processes mapping it, so the sum is the tree's real share of physical memory. Reading it
  costs more, so it is sampled less often.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


def tree(root: psutil.Process | None = None) -> list[psutil.Process]:
    """``root`` (default: this process) and all its live descendants."""
    root = root or psutil.Process()
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def tree_rss(procs: list[psutil.Process] | None = None) -> int:
    """Sum of RSS bytes over the tree (processes that vanish mid-read are skipped)."""
    total = 0
    for p in procs if procs is not None else tree():
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def tree_pss(procs: list[psutil.Process] | None = None) -> int | None:
    """Sum of PSS bytes over the tree, or ``None`` where the platform does not report PSS."""
    total, seen = 0, False
    for p in procs if procs is not None else tree():
        try:
            info = p.memory_full_info()
        except (psutil.Error, OSError):
            continue
        pss = getattr(info, "pss", None)
        if pss is not None:
            total, seen = total + pss, True
    return total if seen else None


@dataclass
class TreeMemorySampler:
    """Background sampler of the tree's RSS (every ``interval_s``) and PSS (every ``pss_every`` samples).

    Use as a context manager; ``peak_rss`` / ``peak_pss`` hold the maxima seen, ``processes`` the
    largest process count.

    Attributes:
        interval_s: Seconds between RSS samples.
        pss_every: Take a PSS sample every this many RSS samples (0 = never).
    """

    interval_s: float = 0.5
    pss_every: int = 4
    peak_rss: int = 0
    peak_pss: int = 0
    processes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> TreeMemorySampler:
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sample(pss=True)

    def sample(self, pss: bool = False) -> None:
        """Take one sample now (RSS always, PSS if asked)."""
        procs = tree()
        self.processes = max(self.processes, len(procs))
        self.peak_rss = max(self.peak_rss, tree_rss(procs))
        if pss:
            self.peak_pss = max(self.peak_pss, tree_pss(procs) or 0)
        self.samples += 1

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self.interval_s):
            i += 1
            self.sample(pss=bool(self.pss_every) and i % self.pss_every == 0)


def wait_quiet(seconds: float = 1.0) -> None:
    """Give exiting processes a moment to go (between measurements of successive runs)."""
    time.sleep(seconds)
