"""Run a cycle for the devices whose data has drifted."""

from __future__ import annotations

import math
from collections.abc import Sequence

from eclm.pipelines.triggers.base import Trigger, check_monotonic
from eclm.pipelines.triggers.decision import Decision
from eclm.pipelines.triggers.observation import Observation


class DriftTrigger(Trigger):
    """Fires for every watched device whose drift score exceeds a threshold.

    A device that fired stays quiet for the next ``cooldown_steps`` coordinator steps even if its
    score stays high: adaptation takes a while to show up in the detector's window, and
    re-adapting on the same stale evidence would waste device time. With ``cooldown_steps=0`` a
    device can fire on every step (but at most once for a repeated step number).

    Devices without a score in an observation are simply not considered that step.

    Args:
        threshold: A device fires when its score is strictly greater than this (finite).
        devices: Devices to watch; ``None`` watches every device that has a score.
        cooldown_steps: Steps to stay quiet after a device fired, >= 0. A device that fired at step
            ``s`` can fire again from step ``s + cooldown_steps + 1``.

    Raises:
        ValueError: If ``threshold`` is not finite, ``cooldown_steps`` < 0 or ``devices`` is empty.
        TypeError: If ``devices`` is a bare string or holds non-strings.
    """

    def __init__(self, threshold: float, devices: Sequence[str] | None = None, cooldown_steps: int = 0) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"DriftTrigger.threshold must be a finite number, got {threshold!r}")
        if isinstance(cooldown_steps, bool) or not isinstance(cooldown_steps, int) or cooldown_steps < 0:
            raise ValueError(f"DriftTrigger.cooldown_steps must be an int >= 0, got {cooldown_steps!r}")
        if devices is not None:
            if isinstance(devices, str):
                raise TypeError(f"DriftTrigger.devices must be a sequence of device names, not the string {devices!r}")
            devices = tuple(devices)
            if not devices:
                raise ValueError("DriftTrigger.devices must be None (watch all) or a non-empty sequence")
            for device in devices:
                if not isinstance(device, str) or not device:
                    raise TypeError(f"DriftTrigger.devices must hold non-empty strings, got {device!r}")
        self.threshold = float(threshold)
        self.devices: tuple[str, ...] | None = devices
        self.cooldown_steps = cooldown_steps
        self.reset()

    def reset(self) -> None:
        """Forget every device's last firing step."""
        self._last_step: int | None = None
        self._fired_at: dict[str, int] = {}

    def cooling_down(self, device: str, step: int) -> bool:
        """Whether ``device`` is inside its cooldown window at ``step``.

        Args:
            device: Device name.
            step: Coordinator step.

        Returns:
            True if the device fired at some step ``s`` with ``step <= s + cooldown_steps``.
        """
        fired = self._fired_at.get(device)
        return fired is not None and step - fired <= self.cooldown_steps

    def decide(self, obs: Observation) -> Decision:
        """Fire for the watched devices whose score is above the threshold and not cooling down.

        Args:
            obs: This step's observation (``step`` and ``drift_scores`` are read).

        Returns:
            ``Decision.adapt(devices, reason)`` listing the drifted devices in ``drift_scores``
            order, or ``Decision.nothing`` when none qualifies.

        Raises:
            ValueError: If ``obs.step`` went backwards.
        """
        check_monotonic(self._last_step, obs.step, "step", type(self).__name__)
        self._last_step = obs.step
        watched = self.devices if self.devices is not None else tuple(obs.drift_scores)
        over = [(d, obs.drift_scores[d]) for d in obs.drift_scores
                if d in watched and obs.drift_scores[d] > self.threshold]
        firing = [(d, s) for d, s in over if not self.cooling_down(d, obs.step)]
        for device, _ in firing:
            self._fired_at[device] = obs.step
        if firing:
            detail = ", ".join(f"{d}={s:.4g}" for d, s in firing)
            return Decision.adapt([d for d, _ in firing], f"drift: {detail} > {self.threshold:g}")
        if over:
            return Decision.nothing(f"drift: {', '.join(d for d, _ in over)} above threshold but cooling down")
        return Decision.nothing(f"drift: no watched device above {self.threshold:g}")

    def __repr__(self) -> str:
        return (f"DriftTrigger(threshold={self.threshold:g}, devices={self.devices!r}, "
                f"cooldown_steps={self.cooldown_steps})")
