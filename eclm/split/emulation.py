"""Emulating weak edge devices and their links on a fast host.

Benchmarks run every device in one process on the host, then translate measured times into
what a slower device behind a slower link would see:

    emulated time = real compute time * (host_speed / device_speed)
                    + latency + bytes / bandwidth          (per message)

Compute scales linearly with the speed ratio (``slowdown``); the link is a fixed latency plus
serialisation at a constant bandwidth. There is no contention or jitter model. ``delay``
actually sleeps the missing time so wall-clock benchmarks see the emulated pace; it takes an
injectable ``sleep`` so tests can check it without waiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["ComputeModel", "LinkModel", "emulated_step_time"]


@dataclass(frozen=True)
class LinkModel:
    """A point-to-point link with constant bandwidth and latency.

    Attributes:
        bandwidth: bytes per second (> 0).
        latency: one-way latency in seconds (>= 0).
    """

    bandwidth: float
    latency: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.bandwidth) or self.bandwidth <= 0:
            raise ValueError(f"LinkModel.bandwidth must be finite and > 0 bytes/s, got {self.bandwidth}")
        if not math.isfinite(self.latency) or self.latency < 0:
            raise ValueError(f"LinkModel.latency must be finite and >= 0 s, got {self.latency}")

    def transfer_time(self, nbytes: float) -> float:
        """Seconds to deliver one message of ``nbytes`` bytes: ``latency + nbytes / bandwidth``.

        Raises:
            ValueError: if ``nbytes`` is negative or not finite.
        """
        if not math.isfinite(nbytes) or nbytes < 0:
            raise ValueError(f"nbytes must be finite and >= 0, got {nbytes}")
        return self.latency + nbytes / self.bandwidth


@dataclass(frozen=True)
class ComputeModel:
    """A device that computes ``slowdown`` times slower than the host.

    Attributes:
        slowdown: ``host_speed / device_speed`` (> 0; values below 1 model a faster device).
    """

    slowdown: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.slowdown) or self.slowdown <= 0:
            raise ValueError(f"ComputeModel.slowdown must be finite and > 0, got {self.slowdown}")

    @classmethod
    def from_speeds(cls, device_speed: float, host_speed: float) -> ComputeModel:
        """Build from throughputs in FLOP/s.

        Raises:
            ValueError: if either speed is not finite and positive.
        """
        for name, value in (("device_speed", device_speed), ("host_speed", host_speed)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be finite and > 0 FLOP/s, got {value}")
        return cls(slowdown=host_speed / device_speed)

    def emulated_time(self, real_seconds: float) -> float:
        """Seconds the device would need for work the host did in ``real_seconds``.

        Raises:
            ValueError: if ``real_seconds`` is negative or not finite.
        """
        if not math.isfinite(real_seconds) or real_seconds < 0:
            raise ValueError(f"real_seconds must be finite and >= 0, got {real_seconds}")
        return real_seconds * self.slowdown

    def delay(self, real_seconds: float, sleep: Callable[[float], None] = time.sleep) -> float:
        """Sleep the difference between emulated and real time (nothing for a faster device).

        Args:
            real_seconds: host time already spent on the work.
            sleep: sleep function (injectable for tests).

        Returns:
            Seconds slept.
        """
        extra = max(0.0, self.emulated_time(real_seconds) - real_seconds)
        if extra > 0:
            sleep(extra)
        return extra

    @contextmanager
    def paced(
        self,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[None]:
        """Context manager: time the enclosed work and then :meth:`delay` accordingly.

        Args:
            clock: monotonic clock in seconds (injectable for tests).
            sleep: sleep function (injectable for tests).
        """
        start = clock()
        yield
        self.delay(clock() - start, sleep=sleep)


def emulated_step_time(
    compute: ComputeModel, link: LinkModel, real_compute_seconds: float, bytes_up: float, bytes_down: float
) -> float:
    """Emulated seconds of one split-learning step of one device.

    Args:
        compute: the device's compute model.
        link: the device's link.
        real_compute_seconds: host time of the device-side forward and backward.
        bytes_up: smashed-activation bytes sent (one message).
        bytes_down: gradient bytes received (one message).

    Returns:
        ``compute.emulated_time(real) + link.transfer_time(up) + link.transfer_time(down)``.
    """
    return (
        compute.emulated_time(real_compute_seconds)
        + link.transfer_time(bytes_up)
        + link.transfer_time(bytes_down)
    )
