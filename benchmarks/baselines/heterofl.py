"""HeteroFL: width-prefix slices of the cloud model sized per device, averaged where they overlap."""

from __future__ import annotations

from benchmarks.baselines.fedavg import FedAvg
from benchmarks.baselines.width_prefix import widest_prefix_within
from eclm.modules import SubModelSpec
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService


class HeteroFL(FedAvg):
    """Like :class:`FedAvg`, but each device trains the widest prefix slice its own budget allows.

    Aggregation averages every module group over the devices whose slice contains it (weighted
    by samples) and leaves groups nobody trained unchanged: HeteroFL's rule for nested slices.
    """

    name = "heterofl"
    label = "HeteroFL"

    def __init__(self, cloud: CloudService, services: list[EdgeService]) -> None:
        super().__init__(cloud, services)
        model = self.cloud.model
        self.device_specs: dict[str, SubModelSpec] = {
            name: widest_prefix_within(self.costs, model.model_id, model.layer_sizes, budget)
            for name, budget in self.budgets.items()
        }

    def spec_for(self, service: EdgeService) -> SubModelSpec:
        return self.device_specs[service.name]
