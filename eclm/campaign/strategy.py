"""What the server side of a cycle does: the axis of variation between eclm and its baselines.

The coordinator runs the same cycle for every method (observe, decide, deliver, install, adapt,
merge, record). A :class:`ServerStrategy` decides the two server-side parts: *what each device
receives* before it adapts, and *what happens to the uploads* afterwards. eclm's own strategy
(:class:`ModularStrategy`) asks the cloud endpoint to derive a sub-model per device and to run
the validated module merge; the benchmark baselines (FedAvg, HeteroFL, local-only, none)
implement the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from eclm.campaign.endpoints import CloudEndpoint, Pending
from eclm.campaign.messages import AttributedUpdate, DeviceSummary, MergeOutcome, SubModelPackage


class ServerStrategy(ABC):
    """The server side of a cycle.

    Attributes:
        name: Short key (``"eclm"``, ``"fedavg"``, ...).
        adapts: Whether devices fine-tune locally (the no-adaptation baseline does not).
        merges: Whether uploads go to a server step (local-only and no-adaptation do not).
    """

    name: ClassVar[str] = "strategy"
    adapts: ClassVar[bool] = True
    merges: ClassVar[bool] = True

    @abstractmethod
    def deliver(self, cloud: CloudEndpoint, summary: DeviceSummary) -> Pending[SubModelPackage] | None:
        """Submit what one device receives before it adapts, or ``None``: it keeps what it holds.

        Args:
            cloud: The cloud endpoint (a strategy may also serve packages itself, in-process).
            summary: The device's summary of this cycle.
        """

    def merge(self, cloud: CloudEndpoint, updates: list[AttributedUpdate]) -> Pending[MergeOutcome]:
        """Submit the server step on this cycle's uploads (only called when ``merges``)."""
        raise NotImplementedError(f"{type(self).__name__} does not merge")

    def arrived(self, cloud: CloudEndpoint, updates: list[AttributedUpdate]) -> Pending[int] | None:
        """Hand uploads to the server as they arrive, while other devices still adapt (``None``:
        nothing to do before the merge, the default). What this starts must not change what
        :meth:`merge` decides, only when its work is done."""
        return None


class ModularStrategy(ServerStrategy):
    """eclm: a sub-model derived per device, merged back by the validated module merge."""

    name = "eclm"

    def deliver(self, cloud: CloudEndpoint, summary: DeviceSummary) -> Pending[SubModelPackage]:
        return cloud.derive(summary)

    def merge(self, cloud: CloudEndpoint, updates: list[AttributedUpdate]) -> Pending[MergeOutcome]:
        return cloud.merge(updates)

    def arrived(self, cloud: CloudEndpoint, updates: list[AttributedUpdate]) -> Pending[int]:
        """The cloud screens each upload on arrival (``merge.screen_on_arrival``; the merge reuses it)."""
        return cloud.prescreen(updates)


__all__ = ["ModularStrategy", "ServerStrategy"]
