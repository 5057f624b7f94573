"""The value a trigger policy returns: adapt some devices now, or do nothing.

A coordinator carries the decision out (derive/refresh sub-models, adapt on the devices, merge,
log). Keeping the decision a plain frozen value is what lets every policy be tested with
hand-built observations and lets tests queue decisions into a mock policy.

Device sets follow one convention throughout the package: an ``"adapt"`` decision with an empty
``devices`` tuple means *every* device. :meth:`Decision.merge` (used by ``AnyOf``) and
:meth:`Decision.intersect` (used by ``AllOf``) treat "every device" as the top of the lattice:
it absorbs any other set under union and is the identity under intersection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

DecisionKind = Literal["adapt", "nothing"]

_KINDS: tuple[str, ...] = ("adapt", "nothing")
_REASON_SEPARATOR = "; "


def _unique_devices(devices: Iterable[str], owner: str) -> tuple[str, ...]:
    """Validate device names and drop repeats, keeping first-seen order (stable logs and tests)."""
    if isinstance(devices, str):
        # A bare string would otherwise be split into characters, one "device" per letter.
        raise TypeError(f"{owner}.devices must be a sequence of device names, not the string {devices!r}")
    seen: dict[str, None] = {}
    for device in devices:
        if not isinstance(device, str) or not device:
            raise TypeError(f"{owner}.devices must hold non-empty strings, got {device!r}")
        seen.setdefault(device, None)
    return tuple(seen)


def _join_reasons(*reasons: str) -> str:
    # Dedupe so that merging many requests with the same reason does not repeat it in the log.
    # Split first: a reason may itself be a joined list from an earlier merge.
    parts = (part for r in reasons for part in r.split(_REASON_SEPARATOR) if part)
    return _REASON_SEPARATOR.join(dict.fromkeys(parts))


@dataclass(frozen=True)
class Decision:
    """What the coordinator should do after one observation.

    Attributes:
        kind: ``"adapt"`` runs an adaptation cycle; ``"nothing"`` skips this step.
        devices: Devices to include in the cycle, first-seen order, no repeats. Empty with kind
            ``"adapt"`` means all devices; always empty with kind ``"nothing"``.
        reason: Human-readable explanation, logged with the cycle (e.g. ``"drift: cam-1=0.41>0.3"``).
    """

    kind: DecisionKind
    devices: tuple[str, ...] = ()
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Decision.kind must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.reason, str):
            raise TypeError(f"Decision.reason must be a string, got {type(self.reason).__name__}")
        devices = _unique_devices(self.devices, "Decision")
        if self.kind == "nothing" and devices:
            raise ValueError(f"Decision.devices must be empty when kind is 'nothing', got {devices}")
        object.__setattr__(self, "devices", devices)

    @classmethod
    def nothing(cls, reason: str = "") -> Decision:
        """A decision not to run a cycle.

        Args:
            reason: Why nothing happens (kept for debugging; composites join reasons).

        Returns:
            A ``"nothing"`` decision.
        """
        return cls("nothing", (), reason)

    @classmethod
    def adapt(cls, devices: Sequence[str] = (), reason: str = "") -> Decision:
        """A decision to run an adaptation cycle.

        Args:
            devices: Devices to include; empty means all devices.
            reason: Why the cycle runs.

        Returns:
            An ``"adapt"`` decision.

        Raises:
            TypeError: If ``devices`` is a bare string or holds a non-string / empty name.
        """
        return cls("adapt", tuple(_unique_devices(devices, "Decision")), reason)

    @property
    def fires(self) -> bool:
        """True for an ``"adapt"`` decision."""
        return self.kind == "adapt"

    @property
    def all_devices(self) -> bool:
        """True when the decision adapts every device (kind ``"adapt"`` with no device list)."""
        return self.fires and not self.devices

    def targets(self, devices: Sequence[str]) -> tuple[str, ...]:
        """Resolve the decision against the devices the coordinator knows about.

        Args:
            devices: All devices currently in the campaign, in the coordinator's order.

        Returns:
            The devices to adapt: none for ``"nothing"``, all of ``devices`` for an all-devices
            decision, otherwise this decision's devices in their own order (devices unknown to the
            coordinator are kept; the coordinator decides whether that is an error).
        """
        if not self.fires:
            return ()
        return tuple(devices) if self.all_devices else self.devices

    def merge(self, other: Decision) -> Decision:
        """Union of two decisions (either one firing is enough).

        Args:
            other: The decision to combine with.

        Returns:
            ``"nothing"`` if neither fires (reasons joined); the firing one if exactly one fires;
            otherwise an ``"adapt"`` decision on the union of devices (all devices if either is
            all devices) with both reasons joined by ``"; "``.

        Raises:
            TypeError: If ``other`` is not a :class:`Decision`.
        """
        if not isinstance(other, Decision):
            raise TypeError(f"Decision.merge expects a Decision, got {type(other).__name__}")
        if not self.fires and not other.fires:
            return Decision.nothing(_join_reasons(self.reason, other.reason))
        if not other.fires:
            return self
        if not self.fires:
            return other
        devices = () if self.all_devices or other.all_devices else self.devices + other.devices
        return Decision.adapt(devices, _join_reasons(self.reason, other.reason))

    def intersect(self, other: Decision) -> Decision:
        """Intersection of two decisions (both must fire).

        Args:
            other: The decision to combine with.

        Returns:
            ``"adapt"`` on the common devices when both fire and share at least one device (an
            all-devices decision is the identity), with reasons joined; otherwise ``"nothing"``.

        Raises:
            TypeError: If ``other`` is not a :class:`Decision`.
        """
        if not isinstance(other, Decision):
            raise TypeError(f"Decision.intersect expects a Decision, got {type(other).__name__}")
        if not (self.fires and other.fires):
            waiting = [d.reason or "a trigger did not fire" for d in (self, other) if not d.fires]
            return Decision.nothing(_join_reasons(*waiting))
        reason = _join_reasons(self.reason, other.reason)
        if self.all_devices:
            return Decision.adapt(other.devices, reason)
        if other.all_devices:
            return Decision.adapt(self.devices, reason)
        common = tuple(d for d in self.devices if d in set(other.devices))
        if not common:
            return Decision.nothing(
                f"triggers fired for disjoint devices {list(self.devices)} and {list(other.devices)}")
        return Decision.adapt(common, reason)
