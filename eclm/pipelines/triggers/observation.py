"""What a trigger policy sees at one coordinator step.

The coordinator builds one :class:`Observation` per step from the drift detectors, the device
resource monitors and the request queue, and hands it to ``Trigger.decide``. Time is a field,
not a clock read: policies never call ``time.time()``, so a scripted sequence of observations
replays exactly in tests and in simulations that run faster (or slower) than real time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

ALL_DEVICES = "*"
"""Entry of :attr:`Observation.manual_requests` that asks for a cycle on every device."""


def _finite(value: object, where: str) -> float:
    # bool is an int subclass; a True drift score is almost certainly a bug upstream.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Observation.{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"Observation.{where} must be finite, got {value!r}")
    return float(value)


def _names(values: object, where: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"Observation.{where} must be a sequence of device names, not the string {values!r}")
    names = tuple(values)  # type: ignore[arg-type]
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"Observation.{where} must hold non-empty strings, got {name!r}")
    return names


@dataclass(frozen=True)
class Observation:
    """One step's view of the campaign, built by the coordinator.

    Attributes:
        step: Coordinator step counter, >= 0, non-decreasing across calls to one trigger.
        time: Seconds on the coordinator's clock (any origin, e.g. ``time.monotonic()`` or
            simulated time), finite, non-decreasing across calls to one trigger.
        drift_scores: Device name -> drift score of its recent data (larger = more drift; the
            scale is the drift detector's, e.g. a p-value complement or a distance).
        resources: Device name -> resource name -> current value of that device's profile
            numbers, e.g. ``{"cam-1": {"memory_bytes": 2e9, "compute_gflops": 40.0,
            "bandwidth_bytes_per_s": 1.25e6}}``.
        devices: Devices currently in the campaign, in the coordinator's order.
        manual_requests: Device names an operator asked to adapt this step; ``"*"``
            (:data:`ALL_DEVICES`) asks for all devices.
    """

    step: int
    time: float
    drift_scores: dict[str, float] = field(default_factory=dict)
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    devices: tuple[str, ...] = ()
    manual_requests: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"Observation.step must be an int >= 0, got {self.step!r}")
        object.__setattr__(self, "time", _finite(self.time, "time"))
        if not isinstance(self.drift_scores, Mapping):
            raise TypeError(f"Observation.drift_scores must be a mapping, got {type(self.drift_scores).__name__}")
        # Copies: the coordinator may keep mutating its own dicts after handing the observation over.
        scores = {}
        for device, score in self.drift_scores.items():
            _names((device,), "drift_scores keys")
            scores[device] = _finite(score, f"drift_scores[{device!r}]")
        object.__setattr__(self, "drift_scores", scores)
        if not isinstance(self.resources, Mapping):
            raise TypeError(f"Observation.resources must be a mapping, got {type(self.resources).__name__}")
        resources: dict[str, dict[str, float]] = {}
        for device, profile in self.resources.items():
            _names((device,), "resources keys")
            if not isinstance(profile, Mapping):
                raise TypeError(f"Observation.resources[{device!r}] must be a mapping of resource name to number, "
                                f"got {type(profile).__name__}")
            resources[device] = {name: _finite(value, f"resources[{device!r}][{name!r}]")
                                 for name, value in profile.items()}
        object.__setattr__(self, "resources", resources)
        object.__setattr__(self, "devices", _names(self.devices, "devices"))
        object.__setattr__(self, "manual_requests", _names(self.manual_requests, "manual_requests"))
