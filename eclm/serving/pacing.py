"""Pace a stage actor's work to the speed of the node it emulates.

:class:`~eclm.serving.emulation.DutyCycle` says how long work takes on a node with a CPU share;
:class:`NodePacer` applies it to a stage's forward pass, block by block, with one change that
matters on a small shared host: the work is measured in **thread CPU time**, not wall time, and
the stage then sleeps until a *deadline* ``start + emulated compute + emulated link time``.

Why CPU time: the emulated node's speed must not depend on how busy the host is. When several
stage actors (plus Ray and the driver) share two cores, a block can wait for a core; wall time
then overstates the work and the duty cycle would stretch the wait by ``1 / share`` as well. CPU
time counts only the work (torch runs on the calling thread with one intra-op thread), so the
emulated duration ``cpu / share`` is what a real node of that share would take. Pacing to a
deadline instead of sleeping a fixed extra absorbs host waits up to the deadline; only when the
host is overcommitted does the wall time exceed the emulated time, and benchmarks report both.

Links. With ``overlap`` (the default of the serving config) a stage hands its output to its
outgoing link and is free for the next micro-batch at once, as a Ray actor is: Ray moves a
returned object outside the actor's thread. The link is then a resource of its own: one message
at a time, FIFO (:meth:`NodePacer.send` keeps when it is next free), and the message is stamped
with its arrival time, which the receiving stage waits for (:meth:`NodePacer.wait_arrival`). The
wall clock is ``time.time()`` so that stamps compare across the stage processes of one host.
Without ``overlap`` the stage itself is busy until its send completes (store-and-forward on the
sender).

Without emulation (a real cluster), block times are plain wall time and nothing sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from eclm.serving.emulation import DutyCycle, LinkDelay


class NodePacer:
    """Time blocks and pace a stage to an emulated node.

    Args:
        cpu_share: CPU share of the emulated node, in (0, 1].
        bandwidth: Bytes/s of each outgoing link hop (``math.inf`` for free).
        latency: Seconds per message per link hop.
        emulate: Pace to the emulated speed (``False``: report wall time, never sleep).
        overlap: The outgoing link works concurrently with the stage (see the module docstring).
        scale: Fraction of a host core that a node of share 1.0 gets, in (0, 1].
        sleep: Sleep function (seconds -> None), injectable for tests.
        clock: Wall clock (seconds since the epoch, the same in every process), injectable for tests.
        cpu_clock: CPU-time clock of the calling thread (seconds), injectable for tests.

    Raises:
        ValueError: If a share, scale, bandwidth or latency is out of range.
    """

    def __init__(
        self,
        cpu_share: float,
        bandwidth: float,
        latency: float,
        *,
        emulate: bool = True,
        overlap: bool = False,
        scale: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {scale!r}")
        self.emulate = bool(emulate)
        self.overlap = bool(overlap)
        self.scale = float(scale)
        self.link_free = 0.0  # wall time the outgoing link finishes its last message
        self._sleep, self._clock, self._cpu_clock = sleep, clock, cpu_clock
        self.link = LinkDelay(bandwidth, latency, sleep=sleep)
        self.duty = DutyCycle(cpu_share * self.scale, sleep=sleep)
        self.cpu_share = float(cpu_share)

    def set_cpu_share(self, cpu_share: float) -> None:
        """Change the emulated node's CPU share (a slowdown or a recovery).

        Raises:
            ValueError: If ``cpu_share`` is not in (0, 1].
        """
        if not 0.0 < cpu_share <= 1.0:
            raise ValueError(f"cpu_share must be in (0, 1], got {cpu_share!r}")
        self.duty = DutyCycle(cpu_share * self.scale, sleep=self._sleep)
        self.cpu_share = float(cpu_share)

    def now(self) -> float:
        """The pacer's wall clock, seconds."""
        return self._clock()

    def timed(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
        """Run ``fn(*args)`` and measure it.

        Returns:
            ``(result, node_seconds, cpu_seconds)``: the duration on the emulated node
            (``cpu / (share * scale)``; wall time when not emulating) and the CPU time used.
        """
        wall0, cpu0 = self._clock(), self._cpu_clock()
        result = fn(*args)
        cpu = max(self._cpu_clock() - cpu0, 0.0)
        if not self.emulate:
            return result, max(self._clock() - wall0, 0.0), cpu
        return result, self.duty.emulated_seconds(cpu), cpu

    def link_seconds(self, nbytes: float, hops: int) -> float:
        """Emulated time to send ``nbytes`` over ``hops`` consecutive links (store-and-forward).

        Raises:
            ValueError: If ``hops`` is negative or ``nbytes`` invalid.
        """
        if not (isinstance(hops, int) and hops >= 0):
            raise ValueError(f"hops must be an int >= 0, got {hops!r}")
        return hops * self.link.emulated_seconds(nbytes) if hops else 0.0

    def pace_until(self, start: float, emulated_seconds: float) -> float:
        """Sleep until ``start + emulated_seconds`` on the wall clock (no-op without emulation).

        Args:
            start: Wall-clock time the paced work began (from :meth:`now`).
            emulated_seconds: How long the work takes on the emulated node, link time included.

        Returns:
            The seconds slept (0 when the host was already slower than the emulated node).
        """
        if not self.emulate:
            return 0.0
        remaining = start + emulated_seconds - self._clock()
        if remaining > 0:
            self._sleep(remaining)
            return remaining
        return 0.0

    def send(self, nbytes: float, hops: int) -> tuple[float, float]:
        """Put a message of ``nbytes`` on the outgoing link (after the stage's compute is paced).

        With ``overlap`` and emulation the link is a FIFO of its own: the message leaves when the
        link is free and arrives ``link seconds`` later; otherwise it is delivered at once (the
        caller paced the link time itself, or there is no emulated link).

        Returns:
            ``(link_seconds, arrive_at)``; ``arrive_at`` is 0 when delivered at once.

        Raises:
            ValueError: If ``hops`` is negative or ``nbytes`` invalid.
        """
        link = self.link_seconds(nbytes, hops)
        if not (self.emulate and self.overlap and link > 0):
            return link, 0.0
        arrive = max(self._clock(), self.link_free) + link
        self.link_free = arrive
        return link, arrive

    def wait_arrival(self, arrive_at: float) -> float:
        """Sleep until a message stamped ``arrive_at`` has arrived (no-op without emulation).

        Returns:
            The seconds waited.
        """
        if not self.emulate or arrive_at <= 0:
            return 0.0
        remaining = arrive_at - self._clock()
        if remaining > 0:
            self._sleep(remaining)
            return remaining
        return 0.0
