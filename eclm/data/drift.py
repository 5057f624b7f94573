"""Environments and how a device's environment changes over time.

An :class:`Environment` is what the device's camera currently sees: a corruption at a severity and,
optionally, a subset of the device's classes (a class shift). A :class:`DriftSchedule` says which
environment holds at every time step: time is cut into *segments* of ``change_every`` steps and
each segment has one environment. Segments are generated lazily from the seed, so a schedule has no
fixed length and two schedules built with the same arguments agree on every step, in any process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from eclm.data.corruptions import CORRUPTIONS, MAX_SEVERITY, MIN_SEVERITY, check_corruption

DriftOrder = Literal["random", "listed"]


@dataclass(frozen=True)
class Environment:
    """One condition a device operates under.

    Attributes:
        corruption: A key of :data:`~eclm.data.corruptions.CORRUPTIONS` (``"none"`` is clean).
        severity: 1..5.
        classes: The classes the device currently encounters (sorted), or ``None`` for all of the
            device's classes.

    Raises:
        ValueError: For an unknown corruption, a bad severity, or an empty/negative class subset.
    """

    corruption: str = "none"
    severity: int = 1
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_corruption(self.corruption, self.severity)
        if self.classes is not None:
            classes = tuple(sorted({int(c) for c in self.classes}))
            if not classes or classes[0] < 0:
                raise ValueError(
                    f"Environment.classes must be None or non-empty non-negative ints, got {self.classes!r}"
                )
            object.__setattr__(self, "classes", classes)


class DriftSchedule:
    """The environment of one device at every time step.

    Either ``environments`` is given (segments cycle through it), or each segment is generated:
    the corruption is drawn from ``corruptions`` (``order="random"``, never the same corruption
    twice in a row when there is a choice) or taken in turn (``order="listed"``), the severity is
    drawn uniformly from ``severity_range``, and with ``class_shift`` the segment sees a random
    subset of ``device_classes`` of size ``ceil(len / 2)``.

    Args:
        corruptions: Corruption names to draw from.
        severity_range: Inclusive ``(low, high)`` severity, within 1..5.
        change_every: Steps per segment (>= 1): the environment may change at steps
            ``change_every, 2 * change_every, ...``.
        order: ``"random"`` or ``"listed"``.
        device_classes: The device's classes; required for ``class_shift``.
        class_shift: Whether segments also restrict the classes the device sees.
        seed: Seed of the schedule (use a different one per device).
        environments: Explicit segment environments, cycled; overrides the generated ones.

    Raises:
        ValueError: For unknown corruptions, bad severities, ``change_every < 1``, an unknown order,
            ``class_shift`` without ``device_classes``, or an empty corruption/environment list.
    """

    def __init__(
        self,
        corruptions: Sequence[str] = tuple(name for name in CORRUPTIONS if name != "none"),
        *,
        severity_range: tuple[int, int] = (MIN_SEVERITY, MAX_SEVERITY),
        change_every: int = 10,
        order: DriftOrder = "random",
        device_classes: Sequence[int] | None = None,
        class_shift: bool = False,
        seed: int = 0,
        environments: Sequence[Environment] | None = None,
    ) -> None:
        if not isinstance(change_every, int) or change_every < 1:
            raise ValueError(f"change_every must be a positive int, got {change_every!r}")
        if order not in ("random", "listed"):
            raise ValueError(f"order must be 'random' or 'listed', got {order!r}")
        low, high = severity_range
        if not MIN_SEVERITY <= low <= high <= MAX_SEVERITY:
            raise ValueError(f"severity_range must satisfy 1 <= low <= high <= 5, got {severity_range!r}")
        if not corruptions:
            raise ValueError("corruptions must name at least one corruption")
        for name in corruptions:
            check_corruption(name, low)
        if class_shift and not device_classes:
            raise ValueError("class_shift needs the device's classes (device_classes)")
        if environments is not None and not environments:
            raise ValueError("environments, when given, must hold at least one Environment")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.corruptions = tuple(corruptions)
        self.severity_range = (int(low), int(high))
        self.change_every = change_every
        self.order: DriftOrder = order
        self.device_classes = tuple(sorted(int(c) for c in device_classes)) if device_classes else None
        self.class_shift = class_shift
        self.seed = seed
        self.environments = tuple(environments) if environments is not None else None
        self._rng = np.random.default_rng(seed)
        self._segments: list[Environment] = []

    @classmethod
    def fixed(cls, environments: Sequence[Environment], change_every: int = 10) -> DriftSchedule:
        """A schedule that cycles through ``environments``, one per segment of ``change_every`` steps."""
        return cls(change_every=change_every, environments=environments)

    def segment_of(self, step: int) -> int:
        """The segment index of time step ``step`` (>= 0)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return step // self.change_every

    def environment_at(self, step: int) -> Environment:
        """The environment holding at time step ``step`` (>= 0)."""
        return self.segment_environment(self.segment_of(step))

    def segment_environment(self, segment: int) -> Environment:
        """The environment of segment ``segment`` (>= 0)."""
        if segment < 0:
            raise ValueError(f"segment must be >= 0, got {segment}")
        if self.environments is not None:
            return self.environments[segment % len(self.environments)]
        # Segments are drawn in order from one generator, so segment k is the same however it is reached.
        while len(self._segments) <= segment:
            self._segments.append(self._draw(len(self._segments)))
        return self._segments[segment]

    def _draw(self, segment: int) -> Environment:
        if self.order == "listed":
            corruption = self.corruptions[segment % len(self.corruptions)]
        else:
            previous = self._segments[-1].corruption if self._segments else None
            choices = [name for name in self.corruptions if name != previous] or list(self.corruptions)
            corruption = choices[int(self._rng.integers(len(choices)))]
        severity = int(self._rng.integers(self.severity_range[0], self.severity_range[1] + 1))
        classes = None
        if self.class_shift and self.device_classes is not None:
            size = math.ceil(len(self.device_classes) / 2)
            classes = tuple(int(c) for c in self._rng.choice(self.device_classes, size=size, replace=False))
        return Environment(corruption, severity, classes)

    def __repr__(self) -> str:
        if self.environments is not None:
            return f"DriftSchedule.fixed({list(self.environments)!r}, change_every={self.change_every})"
        return (
            f"DriftSchedule(corruptions={list(self.corruptions)!r}, severity_range={self.severity_range}, "
            f"change_every={self.change_every}, order={self.order!r}, class_shift={self.class_shift}, seed={self.seed})"
        )
