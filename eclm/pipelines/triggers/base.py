"""The trigger axis of variation: when does the platform run an adaptation cycle?

A :class:`Trigger` is a small stateful policy. The coordinator calls :meth:`Trigger.decide`
once per step with an :class:`~eclm.pipelines.triggers.observation.Observation` and carries out
the returned :class:`~eclm.pipelines.triggers.decision.Decision`. State (last firing time, last
seen resource numbers, queued manual requests) lives in the trigger; everything else arrives in
the observation, so a policy never reads a clock or talks to Ray.

Triggers compose: ``a | b`` fires when either fires (``AnyOf``), ``a & b`` only when both fire
(``AllOf``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from eclm.pipelines.triggers.decision import Decision
from eclm.pipelines.triggers.observation import Observation

if TYPE_CHECKING:
    from eclm.pipelines.triggers.all_of import AllOf
    from eclm.pipelines.triggers.any_of import AnyOf


class Trigger(ABC):
    """Decides, step by step, whether to run an adaptation cycle and for which devices."""

    @abstractmethod
    def decide(self, obs: Observation) -> Decision:
        """Look at one step's observation and decide.

        Implementations update their own state here (a trigger sees every observation exactly
        once, in step order), so call it once per coordinator step.

        Args:
            obs: The coordinator's observation for this step.

        Returns:
            ``Decision.adapt(devices, reason)`` to run a cycle, ``Decision.nothing(reason)`` to skip.

        Raises:
            ValueError: If ``obs`` goes back in step or time relative to earlier observations.
        """

    @abstractmethod
    def reset(self) -> None:
        """Forget all state, as if freshly constructed (e.g. at the start of a new campaign)."""

    def state_dict(self) -> dict:
        """The policy's state as JSON-able values, so a resumed campaign decides as before.

        The default takes every plain attribute (numbers, strings, ``None``, lists and dicts of
        them); composites add their children's states under ``"children"``.
        """
        plain = (int, float, str, bool, type(None), list, tuple, dict)
        state = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()
                 if isinstance(v, plain) and k != "triggers"}
        children = getattr(self, "triggers", None)
        if children:
            state["children"] = [c.state_dict() for c in children]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (of a policy built from the same configuration)."""
        children = getattr(self, "triggers", None) or ()
        for child, child_state in zip(children, state.get("children", ()), strict=False):
            child.load_state_dict(child_state)
        for key, value in state.items():
            if key != "children" and key in vars(self):
                current = vars(self)[key]
                setattr(self, key, tuple(value) if isinstance(current, tuple) else value)

    def __or__(self, other: Trigger) -> AnyOf:
        """``a | b``: fire when either trigger fires, on the union of their devices."""
        # Imported here because the composites subclass Trigger; a top-level import would be circular.
        from eclm.pipelines.triggers.any_of import AnyOf

        if not isinstance(other, Trigger):
            return NotImplemented
        # Union is associative, so ``a | b | c`` becomes one flat AnyOf(a, b, c) (simpler reasons, reprs).
        return AnyOf(*_flatten(self, AnyOf), *_flatten(other, AnyOf))

    def __and__(self, other: Trigger) -> AllOf:
        """``a & b``: fire only when both triggers fire, on the intersection of their devices."""
        from eclm.pipelines.triggers.all_of import AllOf

        if not isinstance(other, Trigger):
            return NotImplemented
        return AllOf(*_flatten(self, AllOf), *_flatten(other, AllOf))


def _flatten(trigger: Trigger, composite: type) -> tuple[Trigger, ...]:
    """Children of ``trigger`` if it is a ``composite`` of the same kind, else the trigger itself."""
    return tuple(trigger.triggers) if isinstance(trigger, composite) else (trigger,)


def check_monotonic(previous: float | None, current: float, name: str, owner: str) -> None:
    """Reject observations that go back in step or time (a coordinator bug, not a policy choice).

    Args:
        previous: Value seen on the last call, or ``None`` on the first call.
        current: Value on this call.
        name: Field name for the error message (``"step"`` or ``"time"``).
        owner: Trigger class name for the error message.

    Raises:
        ValueError: If ``current < previous``.
    """
    if previous is not None and current < previous:
        raise ValueError(f"{owner}: Observation.{name} went backwards ({previous} -> {current}); "
                         "call reset() before replaying an earlier sequence")
