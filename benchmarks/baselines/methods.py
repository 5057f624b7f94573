"""The methods of the adaptation benchmark: which cloud service and which server strategy each runs.

Every method runs the platform's one cycle (:class:`~eclm.campaign.coordinator.CycleCoordinator`);
the axes of variation are the platform's own: the :class:`~eclm.campaign.strategy.ServerStrategy`
(what a device receives, whether uploads are merged) and the cloud service behind the cloud
endpoint (how it derives and merges).

=========  =========================  ==============================================================
method     cloud                      strategy
=========  =========================  ==============================================================
NA         ``CloudService``           derive once, never adapt, never merge
LA         ``CloudService``           derive once, adapt locally, never merge
FedAvg     :class:`FedAvgCloud`       ``ModularStrategy``: common width-prefix slice, plain average
HeteroFL   :class:`HeteroFLCloud`     ``ModularStrategy``: per-device prefix slice, overlap average
eclm       ``CloudService``           ``ModularStrategy``: derived sub-model, validated merge
=========  =========================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.baselines.fedavg import FedAvgCloud
from benchmarks.baselines.heterofl import HeteroFLCloud
from benchmarks.baselines.local_adaptation import LocalAdaptation
from benchmarks.baselines.no_adaptation import NoAdaptation
from eclm.campaign.strategy import ModularStrategy, ServerStrategy
from eclm.pipelines.cloud_service import CloudService


@dataclass(frozen=True)
class BenchMethod:
    """One compared method.

    Attributes:
        name: Key used in results (``"eclm"``, ``"fedavg"``, ...).
        label: Name shown in tables and plots.
        strategy: The server strategy the coordinator runs.
        cloud: The cloud service class behind the cloud endpoint.
    """

    name: str
    label: str
    strategy: type[ServerStrategy]
    cloud: type[CloudService] = CloudService

    @property
    def adapts(self) -> bool:
        """Whether devices fine-tune locally."""
        return self.strategy.adapts

    @property
    def merges(self) -> bool:
        """Whether uploads go to a server step."""
        return self.strategy.merges


METHODS: dict[str, BenchMethod] = {m.name: m for m in (
    BenchMethod("na", "NA (no adaptation)", NoAdaptation),
    BenchMethod("la", "LA (local only)", LocalAdaptation),
    BenchMethod("fedavg", "FedAvg", ModularStrategy, FedAvgCloud),
    BenchMethod("heterofl", "HeteroFL", ModularStrategy, HeteroFLCloud),
    BenchMethod("eclm", "eclm", ModularStrategy),
)}
