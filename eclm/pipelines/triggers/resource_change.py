"""Run a cycle for devices whose resources changed enough to invalidate their sub-model."""

from __future__ import annotations

import math

from eclm.pipelines.triggers.base import Trigger, check_monotonic
from eclm.pipelines.triggers.decision import Decision
from eclm.pipelines.triggers.observation import Observation


def relative_change(old: float, new: float) -> float:
    """``|new - old| / |old|``, with a change away from zero counted as infinite.

    Args:
        old: Previous value.
        new: Current value.

    Returns:
        The relative change, >= 0 (``inf`` if ``old == 0 != new``, 0 if both are 0).
    """
    if old == 0.0:
        return 0.0 if new == 0.0 else math.inf
    return abs(new - old) / abs(old)


class ResourceChangeTrigger(Trigger):
    """Fires for devices where any profiled resource moved by more than a relative amount.

    A device's sub-model is derived for its memory / compute / bandwidth budget; when one of
    those numbers changes a lot, the derived sub-model is no longer the right one. Each number is
    compared with the value seen at the previous observation of that device (not with the value
    at the last firing), so the trigger reacts to jumps, not to slow creep. The first time a
    device (or one of its resource names) appears, its value is only recorded.

    Args:
        relative_change: Fire when ``|new - old| / |old|`` is strictly greater than this, > 0.

    Raises:
        ValueError: If ``relative_change`` is not a finite number > 0.
    """

    def __init__(self, relative_change: float = 0.2) -> None:
        if (isinstance(relative_change, bool) or not isinstance(relative_change, (int, float))
                or not (relative_change > 0 and math.isfinite(relative_change))):
            raise ValueError(f"ResourceChangeTrigger.relative_change must be a finite number > 0, got {relative_change!r}")
        self.relative_change = float(relative_change)
        self.reset()

    def reset(self) -> None:
        """Forget every recorded resource value."""
        self._last_step: int | None = None
        self._last_seen: dict[str, dict[str, float]] = {}

    def decide(self, obs: Observation) -> Decision:
        """Fire for the devices with at least one resource number that jumped.

        Args:
            obs: This step's observation (``step`` and ``resources`` are read).

        Returns:
            ``Decision.adapt(devices, reason)`` for the changed devices in ``resources`` order,
            or ``Decision.nothing`` (always on a device's first appearance).

        Raises:
            ValueError: If ``obs.step`` went backwards.
        """
        check_monotonic(self._last_step, obs.step, "step", type(self).__name__)
        self._last_step = obs.step
        changed: dict[str, list[str]] = {}
        for device, profile in obs.resources.items():
            seen = self._last_seen.setdefault(device, {})
            for name, value in profile.items():
                if name in seen:
                    change = relative_change(seen[name], value)
                    if change > self.relative_change:
                        changed.setdefault(device, []).append(f"{name} {seen[name]:.4g}->{value:.4g}")
                seen[name] = value
        if not changed:
            return Decision.nothing(f"resources: no change above {self.relative_change:.0%}")
        detail = "; ".join(f"{device}: {', '.join(parts)}" for device, parts in changed.items())
        return Decision.adapt(list(changed), f"resources changed > {self.relative_change:.0%} ({detail})")

    def __repr__(self) -> str:
        return f"ResourceChangeTrigger(relative_change={self.relative_change:g})"
