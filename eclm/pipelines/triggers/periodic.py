"""Run a cycle on a fixed schedule: every N coordinator steps or every T seconds."""

from __future__ import annotations

import math

from eclm.pipelines.triggers.base import Trigger, check_monotonic
from eclm.pipelines.triggers.decision import Decision
from eclm.pipelines.triggers.observation import Observation


class PeriodicTrigger(Trigger):
    """Fires for all devices on a step schedule or a time schedule (exactly one of the two).

    Step schedule: fires at the first observation whose step reaches a new multiple of
    ``every_steps`` (step 0 never fires: there is nothing to adapt to yet). If the coordinator
    skips steps, a skipped multiple fires at the next observation, once; the same step observed
    twice fires at most once.

    Time schedule: the first observation only starts the clock; afterwards the trigger fires when
    at least ``every_seconds`` have elapsed (per ``obs.time``) since its last firing (or since
    the first observation). Measuring from the actual firing rather than a fixed grid means a
    long pause yields one catch-up cycle, not a burst.

    Args:
        every_steps: Period in coordinator steps, >= 1.
        every_seconds: Period in seconds of ``obs.time``, > 0 and finite.

    Raises:
        ValueError: If neither or both periods are given, or a period is out of range.
    """

    def __init__(self, every_steps: int | None = None, every_seconds: float | None = None) -> None:
        if (every_steps is None) == (every_seconds is None):
            raise ValueError("PeriodicTrigger needs exactly one of every_steps or every_seconds, "
                             f"got every_steps={every_steps!r}, every_seconds={every_seconds!r}")
        if every_steps is not None and (
                isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1):
            raise ValueError(f"PeriodicTrigger.every_steps must be an int >= 1, got {every_steps!r}")
        if every_seconds is not None and (
                isinstance(every_seconds, bool) or not isinstance(every_seconds, (int, float))
                or not (every_seconds > 0 and math.isfinite(every_seconds))):
            raise ValueError(f"PeriodicTrigger.every_seconds must be a finite number > 0, got {every_seconds!r}")
        self.every_steps = every_steps
        self.every_seconds = float(every_seconds) if every_seconds is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget the schedule position; the next observation starts afresh."""
        self._last_step: int | None = None
        self._last_time: float | None = None
        self._fired_period = 0  # index of the last step multiple that fired (0 = step 0, never fires)
        self._clock_start: float | None = None  # obs.time of the last firing, or of the first observation

    def decide(self, obs: Observation) -> Decision:
        """Fire for all devices when the period has come round.

        Args:
            obs: This step's observation (only ``step`` or ``time`` is read).

        Returns:
            ``Decision.adapt((), reason)`` (all devices) when due, else ``Decision.nothing``.

        Raises:
            ValueError: If ``obs.step`` or ``obs.time`` went backwards.
        """
        check_monotonic(self._last_step, obs.step, "step", type(self).__name__)
        check_monotonic(self._last_time, obs.time, "time", type(self).__name__)
        self._last_step, self._last_time = obs.step, obs.time
        if self.every_steps is not None:
            return self._decide_by_step(obs.step, self.every_steps)
        assert self.every_seconds is not None
        return self._decide_by_time(obs.time, self.every_seconds)

    def _decide_by_step(self, step: int, every: int) -> Decision:
        period = step // every
        if period <= self._fired_period:
            return Decision.nothing(f"periodic: step {step}, next cycle at step {(self._fired_period + 1) * every}")
        self._fired_period = period
        return Decision.adapt((), f"periodic: step {step} reached a multiple of {every}")

    def _decide_by_time(self, now: float, every: float) -> Decision:
        if self._clock_start is None:
            self._clock_start = now
            return Decision.nothing(f"periodic: clock started at t={now:g}s")
        elapsed = now - self._clock_start
        if elapsed < every:
            return Decision.nothing(f"periodic: {elapsed:g}s of {every:g}s elapsed")
        self._clock_start = now
        return Decision.adapt((), f"periodic: {elapsed:g}s >= {every:g}s since last cycle")

    def __repr__(self) -> str:
        if self.every_steps is not None:
            return f"PeriodicTrigger(every_steps={self.every_steps})"
        return f"PeriodicTrigger(every_seconds={self.every_seconds:g})"
