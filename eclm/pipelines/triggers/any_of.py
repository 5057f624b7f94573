"""Run a cycle when any of several triggers fires."""

from __future__ import annotations

from eclm.pipelines.triggers._composite import CompositeTrigger
from eclm.pipelines.triggers.decision import Decision
from eclm.pipelines.triggers.observation import Observation


class AnyOf(CompositeTrigger):
    """Fires when at least one child fires, for the union of the firing children's devices.

    Build with ``a | b | c`` or ``AnyOf(a, b, c)``. All children are asked every step.

    Args:
        *triggers: At least one child trigger.

    Raises:
        ValueError: If no child is given.
        TypeError: If a child is not a ``Trigger``.
    """

    def decide(self, obs: Observation) -> Decision:
        """Merge the children's decisions.

        Args:
            obs: This step's observation, passed to every child.

        Returns:
            The :meth:`Decision.merge` of all firing children (all devices if any child fired for
            all devices; reasons joined), or ``Decision.nothing`` if none fired.
        """
        decisions = self.child_decisions(obs)
        firing = [d for d in decisions if d.fires]
        if not firing:
            return Decision.nothing("no trigger fired")
        merged = firing[0]
        for decision in firing[1:]:
            merged = merged.merge(decision)
        return merged
