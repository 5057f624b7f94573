"""Per-node resource monitor with EWMA smoothing and change events.

The monitor is the "resource monitor" part of AMP4EC: it tracks what a node can currently do (CPU
capacity and load, memory, link) and how long each model block takes on it, and tells the
coordinator when those numbers moved enough that the current partition may no longer be the best.

Raw readings are noisy (a single ``psutil.cpu_percent`` sample can swing by tens of percent), so every
quantity is smoothed with an exponentially weighted moving average (EWMA)::

    smoothed <- alpha * reading + (1 - alpha) * smoothed

and an event is emitted only when a smoothed quantity has moved by more than ``threshold`` (relative)
since the value last reported for that quantity. Reference values are kept per quantity, so a slow
drift accumulates until it crosses the threshold instead of being silently re-based.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import psutil


@dataclass(frozen=True)
class NodeResources:
    """What one node offers at one moment.

    Attributes:
        cpu_share: CPU capacity in cores (e.g. 0.6 for a container limited to 60% of one core).
        cpu_load: Fraction of that capacity already busy, in [0, 1].
        mem_total: Memory the node may use, bytes.
        mem_available: Memory still free, bytes (``<= mem_total``).
        bandwidth: Outgoing link bandwidth, bytes/s (``math.inf`` for an in-process link).
        latency: Outgoing link latency, seconds.
    """

    cpu_share: float
    cpu_load: float
    mem_total: float
    mem_available: float
    bandwidth: float = math.inf
    latency: float = 0.0

    def __post_init__(self) -> None:
        if not (self.cpu_share > 0 and math.isfinite(self.cpu_share)):
            raise ValueError(f"cpu_share must be a positive finite number of cores, got {self.cpu_share!r}")
        if not 0.0 <= self.cpu_load <= 1.0:
            raise ValueError(f"cpu_load must be in [0, 1], got {self.cpu_load!r}")
        if not self.mem_total >= 0:
            raise ValueError(f"mem_total must be >= 0 bytes, got {self.mem_total!r}")
        if not 0 <= self.mem_available <= self.mem_total:
            raise ValueError(
                f"mem_available must be in [0, mem_total={self.mem_total}], got {self.mem_available!r}"
            )
        if not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {self.bandwidth!r}")
        if not (self.latency >= 0 and math.isfinite(self.latency)):
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {self.latency!r}")

    @property
    def effective_speed(self) -> float:
        """Cores' worth of compute still free: ``cpu_share * (1 - cpu_load)``."""
        return self.cpu_share * (1.0 - self.cpu_load)


@dataclass(frozen=True)
class ResourceEvent:
    """A smoothed quantity moved by more than the monitor's threshold.

    Attributes:
        quantity: ``"effective_speed"``, ``"mem_available"``, ``"bandwidth"``, ``"latency"`` or
            ``"block_latency[i]"`` for block ``i``.
        previous: Value last reported for this quantity.
        current: Smoothed value now.
    """

    quantity: str
    previous: float
    current: float

    @property
    def relative_change(self) -> float:
        """Signed relative change ``(current - previous) / |previous|`` (``±inf`` from zero/inf)."""
        return _signed_relative_change(self.previous, self.current)


def _signed_relative_change(previous: float, current: float) -> float:
    if previous == current:
        return 0.0
    if not (math.isfinite(previous) and math.isfinite(current)) or previous == 0:
        return math.copysign(math.inf, current - previous)
    return (current - previous) / abs(previous)


def _ewma(alpha: float, previous: float | None, reading: float) -> float:
    # An infinite value (e.g. an in-process link) would poison the average forever; jump instead.
    if previous is None or not (math.isfinite(previous) and math.isfinite(reading)):
        return reading
    return alpha * reading + (1.0 - alpha) * previous


class ResourceMonitor:
    """EWMA-smoothed view of one node's resources and per-block latencies.

    Readings come either from :meth:`sample` (psutil on the local machine) or from
    :meth:`observe` (injected, e.g. reported by a remote actor or built by a test).

    Args:
        alpha: EWMA weight of a new reading, in (0, 1]; 1 disables smoothing.
        threshold: Relative change (> 0) of a smoothed quantity that triggers an event in
            :meth:`poll`; 0.25 means "moved by more than 25%".
        cpu_share: Cores this node may use; defaults to ``os.cpu_count()``. Emulated nodes pass
            their share (e.g. 0.4) so that ``effective_speed`` is comparable across nodes.
        mem_limit: Memory cap in bytes for an emulated node; ``None`` uses the machine's memory.
        bandwidth: Configured outgoing bandwidth, bytes/s, used by :meth:`sample`.
        latency: Configured outgoing link latency, seconds, used by :meth:`sample`.
        cpu_percent: Callable returning the node CPU utilisation in percent; injectable for tests.

    Raises:
        ValueError: If ``alpha`` or ``threshold`` is out of range.
    """

    def __init__(
        self,
        alpha: float = 0.3,
        threshold: float = 0.25,
        *,
        cpu_share: float | None = None,
        mem_limit: float | None = None,
        bandwidth: float = math.inf,
        latency: float = 0.0,
        cpu_percent: Callable[[], float] | None = None,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if not (threshold > 0 and math.isfinite(threshold)):
            raise ValueError(f"threshold must be a positive finite relative change, got {threshold!r}")
        if mem_limit is not None and not mem_limit > 0:
            raise ValueError(f"mem_limit must be > 0 bytes or None, got {mem_limit!r}")
        self.alpha = alpha
        self.threshold = threshold
        self.cpu_share = float(cpu_share if cpu_share is not None else (os.cpu_count() or 1))
        self.mem_limit = mem_limit
        self.bandwidth = bandwidth
        self.latency = latency
        # interval=None: non-blocking, utilisation since the previous call (first call returns 0.0).
        self._cpu_percent = cpu_percent or (lambda: psutil.cpu_percent(interval=None))
        self._smoothed: NodeResources | None = None
        self._block_latency: dict[int, float] = {}
        self._reported: dict[str, float] = {}

    # ------------------------------------------------------------------ readings
    def sample(self) -> NodeResources:
        """Read CPU load and memory with psutil, fold them in, and return the smoothed snapshot.

        Memory of an emulated node (``mem_limit`` set) is the limit minus this process's resident
        set, because the emulated node is this process.

        Returns:
            The smoothed :class:`NodeResources` after this reading.
        """
        load = min(max(self._cpu_percent() / 100.0, 0.0), 1.0)
        vm = psutil.virtual_memory()
        if self.mem_limit is None:
            total, available = float(vm.total), float(vm.available)
        else:
            total = float(min(self.mem_limit, vm.total))
            rss = float(psutil.Process().memory_info().rss)
            available = min(max(total - rss, 0.0), float(vm.available))
        reading = NodeResources(self.cpu_share, load, total, available, self.bandwidth, self.latency)
        return self.observe(reading)

    def observe(self, reading: NodeResources) -> NodeResources:
        """Fold an injected reading into the smoothed state.

        Args:
            reading: Raw resources as measured (or reported) now.

        Returns:
            The smoothed :class:`NodeResources` after this reading.

        Raises:
            TypeError: If ``reading`` is not a :class:`NodeResources`.
        """
        if not isinstance(reading, NodeResources):
            raise TypeError(f"reading must be NodeResources, got {type(reading).__name__}")
        s = self._smoothed
        if s is None:
            self._smoothed = reading
        else:
            a = self.alpha
            mem_total = _ewma(a, s.mem_total, reading.mem_total)
            self._smoothed = replace(
                s,
                cpu_share=_ewma(a, s.cpu_share, reading.cpu_share),
                cpu_load=_ewma(a, s.cpu_load, reading.cpu_load),
                mem_total=mem_total,
                # Clamp: the two memory averages move independently and may cross by rounding.
                mem_available=min(_ewma(a, s.mem_available, reading.mem_available), mem_total),
                bandwidth=_ewma(a, s.bandwidth, reading.bandwidth),
                latency=_ewma(a, s.latency, reading.latency),
            )
        return self._smoothed

    def record_block_latency(self, block: int, seconds: float) -> float:
        """Fold a measured forward time of one block into its smoothed latency.

        Args:
            block: Block index in the model chain (>= 0).
            seconds: Measured wall time of that block's forward pass on this node.

        Returns:
            The smoothed latency of ``block`` in seconds.

        Raises:
            ValueError: If ``block`` is negative or ``seconds`` is negative or not finite.
        """
        if not (isinstance(block, int) and block >= 0):
            raise ValueError(f"block must be a non-negative int, got {block!r}")
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a finite duration >= 0, got {seconds!r}")
        value = _ewma(self.alpha, self._block_latency.get(block), float(seconds))
        self._block_latency[block] = value
        return value

    # ------------------------------------------------------------------ views
    def snapshot(self) -> NodeResources | None:
        """Smoothed resources, or ``None`` before the first reading."""
        return self._smoothed

    def block_latencies(self) -> dict[int, float]:
        """Smoothed per-block latencies in seconds, keyed by block index (a copy)."""
        return dict(self._block_latency)

    def _quantities(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if self._smoothed is not None:
            values["effective_speed"] = self._smoothed.effective_speed
            values["mem_available"] = self._smoothed.mem_available
            values["bandwidth"] = self._smoothed.bandwidth
            values["latency"] = self._smoothed.latency
        for block, seconds in sorted(self._block_latency.items()):
            values[f"block_latency[{block}]"] = seconds
        return values

    def poll(self) -> list[ResourceEvent]:
        """Report quantities that moved by more than ``threshold`` since last reported.

        The first time a quantity is seen its value becomes the reference and no event is emitted
        for it: the initial plan is built from the initial snapshot, so there is nothing to react
        to yet. A quantity's reference is updated only when it emits an event.

        Returns:
            One :class:`ResourceEvent` per quantity that crossed the threshold, in a stable order
            (node quantities first, then blocks by index); empty when nothing changed enough.
        """
        events: list[ResourceEvent] = []
        for name, current in self._quantities().items():
            previous = self._reported.get(name)
            if previous is None:
                self._reported[name] = current
                continue
            if abs(_signed_relative_change(previous, current)) > self.threshold:
                events.append(ResourceEvent(name, previous, current))
                self._reported[name] = current
        return events
