"""LA: every device fine-tunes its own sub-model; nothing goes back to the cloud."""

from __future__ import annotations

from eclm.campaign.endpoints import CloudEndpoint, Pending
from eclm.campaign.messages import DeviceSummary, SubModelPackage
from eclm.campaign.strategy import ServerStrategy


class DeriveOnce(ServerStrategy):
    """Deliver eclm's derivation from the pretrained cloud once, then never again; never merge.

    A device that holds no sub-model yet (``summary.held is None``) receives what
    ``CloudService.derive`` gives it; afterwards it keeps what it holds (and its replay buffer)
    from cycle to cycle, and its updates are never uploaded.
    """

    merges = False

    def deliver(self, cloud: CloudEndpoint, summary: DeviceSummary) -> Pending[SubModelPackage] | None:
        return cloud.derive(summary) if summary.held is None else None


class LocalAdaptation(DeriveOnce):
    """Local adaptation only: derive once, then adapt locally forever; devices learn nothing from each other."""

    name = "la"
