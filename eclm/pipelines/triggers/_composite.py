"""Shared machinery of the composite triggers (``AnyOf``, ``AllOf``)."""

from __future__ import annotations

from eclm.pipelines.triggers.base import Trigger
from eclm.pipelines.triggers.decision import Decision
from eclm.pipelines.triggers.observation import Observation


class CompositeTrigger(Trigger):
    """A trigger built from child triggers; subclasses say how child decisions combine.

    Every child sees every observation, even when the outcome is already known: children are
    stateful (a resource trigger records values, a periodic trigger tracks its schedule), and
    skipping one would leave it with a hole in its history. Children also update their own state
    (a manual request is consumed, a drift cooldown starts) whether or not the composite fires.

    Args:
        *triggers: At least one child trigger.

    Raises:
        ValueError: If no child is given.
        TypeError: If a child is not a :class:`Trigger`.
    """

    def __init__(self, *triggers: Trigger) -> None:
        name = type(self).__name__
        if not triggers:
            raise ValueError(f"{name} needs at least one trigger")
        for i, trigger in enumerate(triggers):
            if not isinstance(trigger, Trigger):
                raise TypeError(f"{name} argument {i} must be a Trigger, got {type(trigger).__name__}")
        self.triggers: tuple[Trigger, ...] = tuple(triggers)

    def reset(self) -> None:
        """Reset every child."""
        for trigger in self.triggers:
            trigger.reset()

    def child_decisions(self, obs: Observation) -> list[Decision]:
        """Ask every child, in order (no short-circuit).

        Args:
            obs: This step's observation.

        Returns:
            One decision per child.
        """
        return [trigger.decide(obs) for trigger in self.triggers]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(t) for t in self.triggers)})"
