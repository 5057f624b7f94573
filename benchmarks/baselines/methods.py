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

Each method also has its own adaptation settings (:attr:`BenchMethod.adaptation`): how its devices
train and what its exchange sends; the training hyper-parameters (epochs, learning rate, batch)
are the benchmark's, the same for all. eclm runs the platform's defaults (module-sparse training,
int8 deltas). The baselines train every parameter (module sparsity is eclm's own) and hold exactly
the model they receive (their downloads carry every change); each federated baseline runs twice:
*as published* (the full float32 model both ways every cycle) and *with the platform's shared
codec* (int8 deltas with error feedback up, int8 deltas against the version the device holds
down, float16 first deliveries, every payload losslessly compressed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
        adaptation: The method's own ``adaptation`` settings (merged over the benchmark's).
    """

    name: str
    label: str
    strategy: type[ServerStrategy]
    cloud: type[CloudService] = CloudService
    adaptation: Mapping[str, object] = field(default_factory=dict)

    @property
    def adapts(self) -> bool:
        """Whether devices fine-tune locally."""
        return self.strategy.adapts

    @property
    def merges(self) -> bool:
        """Whether uploads go to a server step."""
        return self.strategy.merges


#: Dense training, and a device holds exactly the model it receives (every change of it: skipping
#: small module changes in downloads is eclm's module-level exchange).
DENSE = {"trainable": "all", "keep_local": False, "download_min_change": 0.0}
#: The full float32 model both ways (FedAvg and HeteroFL as published).
PUBLISHED = DENSE | {"delta_dtype": "float32", "first_delivery_dtype": "float32", "wire_compression": "none"}
#: The platform's shared codec (the defaults: int8 deltas, float16 first deliveries, lossless
#: byte-plane DEFLATE of every payload).
CODEC = DENSE | {"delta_dtype": "int8", "first_delivery_dtype": "float16", "wire_compression": "deflate"}

METHODS: dict[str, BenchMethod] = {m.name: m for m in (
    BenchMethod("na", "NA (no adaptation)", NoAdaptation),
    BenchMethod("la", "LA (local only)", LocalAdaptation, adaptation=DENSE),
    BenchMethod("fedavg", "FedAvg", ModularStrategy, FedAvgCloud, PUBLISHED),
    BenchMethod("fedavg_codec", "FedAvg + codec", ModularStrategy, FedAvgCloud, CODEC),
    BenchMethod("heterofl", "HeteroFL", ModularStrategy, HeteroFLCloud, PUBLISHED),
    BenchMethod("heterofl_codec", "HeteroFL + codec", ModularStrategy, HeteroFLCloud, CODEC),
    BenchMethod("eclm", "eclm", ModularStrategy),
)}
