"""Emulate heterogeneous edge nodes and links on one machine.

Duty-cycle model of a CPU share. A container limited to ``share`` of a core (cgroups CFS quota)
gets ``share * period`` of CPU time per scheduling period, so work needing ``t`` seconds of a full
core finishes after about ``t / share`` seconds of wall time. :class:`DutyCycle` reproduces that
on an unrestricted core: it runs the work at full speed (``t`` seconds), then idles for
``t * (1 / share - 1)`` so the total is ``t / share``. The average speed matches; the fine-grained
interleaving does not (the work finishes in one burst, not spread over periods), and the model
assumes the host core is not itself contended - run one emulated node per core.

Link model. :class:`LinkDelay` charges ``latency + bytes / bandwidth`` per message, the same model
the partitioner uses, so measured pipelines can be checked against predicted plans.

Both classes expose the pure arithmetic (``emulated_seconds`` / ``extra_seconds``) separately from
``apply``, which actually sleeps; the sleep function is injectable so benchmarks use real time and
tests need none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DutyCycle:
    """Make this process look ``cpu_share`` times as fast as it is.

    Args:
        cpu_share: Fraction of a core the emulated node has, in (0, 1].
        sleep: Function used to idle, seconds -> None (``time.sleep`` by default).

    Raises:
        ValueError: If ``cpu_share`` is not in (0, 1] (a share above 1 would need running faster).
    """

    def __init__(self, cpu_share: float, sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0.0 < cpu_share <= 1.0:
            raise ValueError(f"cpu_share must be in (0, 1], got {cpu_share!r}")
        self.cpu_share = float(cpu_share)
        self._sleep = sleep

    def emulated_seconds(self, compute_seconds: float) -> float:
        """Wall time the emulated node needs for work taking ``compute_seconds`` here: ``t / share``.

        Raises:
            ValueError: If ``compute_seconds`` is negative or not finite.
        """
        _check_seconds("compute_seconds", compute_seconds)
        return compute_seconds / self.cpu_share

    def extra_seconds(self, compute_seconds: float) -> float:
        """Idle time to add after ``compute_seconds`` of real work: ``t * (1 / share - 1)``."""
        return self.emulated_seconds(compute_seconds) - compute_seconds

    def apply(self, compute_seconds: float) -> float:
        """Sleep the idle part of the duty cycle for work that took ``compute_seconds``.

        Returns:
            The seconds slept.
        """
        extra = self.extra_seconds(compute_seconds)
        if extra > 0:
            self._sleep(extra)
        return extra

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
        """Run ``fn(*args, **kwargs)`` at the emulated speed.

        Returns:
            ``(result, emulated_seconds)`` where the second item is the duration the emulated
            node took (measured compute time divided by the share).
        """
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        compute = time.perf_counter() - start
        self.apply(compute)
        return result, self.emulated_seconds(compute)


class LinkDelay:
    """A link of ``bandwidth`` bytes/s and ``latency`` seconds, emulated by sleeping.

    Args:
        bandwidth: Bytes per second, > 0 (``math.inf`` for a free link).
        latency: Seconds per message, >= 0.
        sleep: Function used to wait, seconds -> None (``time.sleep`` by default).

    Raises:
        ValueError: If ``bandwidth`` or ``latency`` is out of range.
    """

    def __init__(self, bandwidth: float, latency: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {bandwidth!r}")
        _check_seconds("latency", latency)
        self.bandwidth = float(bandwidth)
        self.latency = float(latency)
        self._sleep = sleep

    def emulated_seconds(self, nbytes: float) -> float:
        """Transfer time of one message of ``nbytes``: ``latency + nbytes / bandwidth``.

        Raises:
            ValueError: If ``nbytes`` is negative or not finite.
        """
        if not (nbytes >= 0 and math.isfinite(nbytes)):
            raise ValueError(f"nbytes must be a finite number >= 0, got {nbytes!r}")
        return self.latency + nbytes / self.bandwidth

    def apply(self, nbytes: float) -> float:
        """Sleep for the transfer time of ``nbytes``.

        Returns:
            The seconds slept.
        """
        seconds = self.emulated_seconds(nbytes)
        if seconds > 0:
            self._sleep(seconds)
        return seconds


def _check_seconds(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
