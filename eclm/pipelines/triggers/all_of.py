"""Run a cycle only when several triggers agree."""

from __future__ import annotations

from eclm.pipelines.triggers._composite import CompositeTrigger
from eclm.pipelines.triggers.decision import Decision
from eclm.pipelines.triggers.observation import Observation


class AllOf(CompositeTrigger):
    """Fires only when every child fires, for the devices all of them name.

    Build with ``a & b`` or ``AllOf(a, b)``. A child that fires for all devices does not narrow
    the set; if the children fire for disjoint device sets the result is ``"nothing"``. Typical
    use: ``DriftTrigger(...) & PeriodicTrigger(every_seconds=600)`` — adapt drifted devices, but
    at most on the periodic schedule.

    Args:
        *triggers: At least one child trigger.

    Raises:
        ValueError: If no child is given.
        TypeError: If a child is not a ``Trigger``.
    """

    def decide(self, obs: Observation) -> Decision:
        """Intersect the children's decisions.

        Args:
            obs: This step's observation, passed to every child.

        Returns:
            ``Decision.adapt`` on the common devices (reasons joined) when every child fired and
            they share a device, else ``Decision.nothing`` naming what was missing.
        """
        decisions = self.child_decisions(obs)
        silent = [i for i, d in enumerate(decisions) if not d.fires]
        if silent:
            waiting = ", ".join(repr(self.triggers[i]) for i in silent)
            return Decision.nothing(f"not all triggers fired (waiting on {waiting})")
        combined = decisions[0]
        for decision in decisions[1:]:
            combined = combined.intersect(decision)
        return combined
