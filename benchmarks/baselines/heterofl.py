"""HeteroFL: width-prefix slices of the cloud model sized per device, averaged where they overlap."""

from __future__ import annotations

from benchmarks.baselines.fedavg import FedAvgCloud
from eclm.campaign.messages import DeviceSummary
from eclm.modules import SubModelSpec


class HeteroFLCloud(FedAvgCloud):
    """Like :class:`FedAvgCloud`, but each device trains the widest prefix slice its own budget allows.

    The budget is the cloud's own (:meth:`CloudService.budget`) from the resources the device
    reports. The merge averages every module group over the devices whose slice contains it
    (weighted by samples) and leaves groups nobody trained unchanged: HeteroFL's rule for nested
    slices.
    """

    def width_spec(self, summary: DeviceSummary) -> SubModelSpec:
        return self._widest(summary.device, summary.resources)
