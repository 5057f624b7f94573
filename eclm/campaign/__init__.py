"""The campaign cycle, Ray-free: typed messages, endpoint protocols, the coordinator and the store.

``eclm.Platform`` binds the coordinator to Ray actors (:mod:`eclm.runtime.ray_fleet`); tests and
benchmarks bind it to services in this process (:mod:`eclm.campaign.local`). Names are imported
on first use.
"""

from eclm._lazy import lazy_exports

_EXPORTS = {
    "CycleCoordinator": "coordinator", "CloudUnavailable": "coordinator",
    "CycleResult": "results", "SplitRoundResult": "results",
    "CampaignState": "store", "CampaignStore": "store", "MemoryStore": "store", "CorruptStoreError": "store",
    "DeviceStore": "device_store", "DeviceSnapshot": "device_store",
    "LocalFleet": "local",
    "ModularStrategy": "strategy", "ServerStrategy": "strategy",
    "NullRecorder": "recorder", "TrackingRecorder": "tracking_recorder",
    "CallFailure": "endpoints", "CloudEndpoint": "endpoints", "DeviceEndpoint": "endpoints", "Fleet": "endpoints",
    "EndpointDead": "endpoints", "Pending": "endpoints",
    "run_split_round": "split_round",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(
    __name__, {name: (f"eclm.campaign.{module}", name) for name, module in _EXPORTS.items()}, __all__
)
