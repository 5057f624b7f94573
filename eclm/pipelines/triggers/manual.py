"""Run a cycle because an operator asked for one."""

from __future__ import annotations

from collections.abc import Sequence

from eclm.pipelines.triggers.base import Trigger
from eclm.pipelines.triggers.decision import Decision
from eclm.pipelines.triggers.observation import ALL_DEVICES, Observation


class ManualTrigger(Trigger):
    """Fires once per request, either queued with :meth:`request` or carried in the observation.

    Requests queued through :meth:`request` (e.g. from a CLI command on the driver) and the
    observation's ``manual_requests`` (e.g. forwarded by the coordinator from an edge device) are
    both consumed by the next :meth:`decide`: every pending request fires in that one decision
    and none fires again.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Drop all pending requests."""
        self._pending: list[Decision] = []

    @property
    def pending(self) -> int:
        """Number of queued requests not yet consumed by :meth:`decide`."""
        return len(self._pending)

    def request(self, devices: Sequence[str] | None = None, reason: str = "manual request") -> None:
        """Queue a request for a cycle at the next step.

        Args:
            devices: Devices to adapt; ``None`` (or empty) means all devices.
            reason: Recorded in the decision's reason.

        Raises:
            TypeError: If ``devices`` is a bare string or holds non-strings.
        """
        self._pending.append(Decision.adapt(() if devices is None else devices, reason))

    def decide(self, obs: Observation) -> Decision:
        """Consume every pending request and fire once for the union of their devices.

        Args:
            obs: This step's observation (``manual_requests`` is read; ``"*"`` means all devices).

        Returns:
            ``Decision.adapt`` for the union of requested devices (all devices if any request
            was for all), or ``Decision.nothing`` without requests.
        """
        requests, self._pending = self._pending, []
        if obs.manual_requests:
            everything = ALL_DEVICES in obs.manual_requests
            devices = () if everything else obs.manual_requests
            requests.append(Decision.adapt(devices, f"manual request at step {obs.step}"))
        if not requests:
            return Decision.nothing("manual: no request")
        decision = requests[0]
        for other in requests[1:]:
            decision = decision.merge(other)
        return decision

    def __repr__(self) -> str:
        return f"ManualTrigger(pending={self.pending})"
