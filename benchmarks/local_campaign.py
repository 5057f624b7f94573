"""In-process campaigns for the benchmarks: the platform's cycle coordinator over local services.

Benchmarks run the very cycle ``eclm.Platform`` runs (:class:`~eclm.campaign.coordinator.CycleCoordinator`),
bound to services in the benchmark's process (:class:`~eclm.campaign.local.LocalFleet`) instead of
Ray actors, starting from a pretrained cloud snapshot so every compared run starts from the same
weights without repeating the offline stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from eclm.campaign.coordinator import CycleCoordinator
from eclm.campaign.local import LocalFleet
from eclm.campaign.messages import CloudSnapshot
from eclm.campaign.recorder import CycleRecorder
from eclm.campaign.store import CampaignState, MemoryStore
from eclm.campaign.strategy import ServerStrategy
from eclm.config import PlatformConfig
from eclm.pipelines.cloud_service import CloudService


def restored_cloud(config: PlatformConfig, snapshot: CloudSnapshot, threads: int = 1,
                   cls: type[CloudService] = CloudService) -> CloudService:
    """A cloud service of class ``cls`` restored to ``snapshot`` (weights, version, best accuracy)."""
    cloud = cls(config, threads)
    cloud.restore(snapshot)
    return cloud


def local_coordinator(config: PlatformConfig, pretrained: CloudSnapshot, devices: Mapping[str, Callable[[], Any]],
                      *, threads: int = 1, cloud: type[CloudService] = CloudService,
                      strategy: ServerStrategy | None = None, recorder: CycleRecorder | None = None
                      ) -> CycleCoordinator:
    """A connected coordinator over in-process services whose campaign starts at ``pretrained``.

    Args:
        config: The platform config.
        pretrained: The cloud snapshot the campaign starts from (committed as its first version,
            so a recreated cloud endpoint comes back to it).
        devices: Per device name, a factory of its service.
        threads: torch threads of the cloud service.
        cloud: The cloud service class.
        strategy: The server strategy (default: eclm's).
        recorder: Where the coordinator reports (default: nowhere).
    """
    fleet = LocalFleet(lambda: restored_cloud(config, pretrained, threads, cloud), devices)
    store = MemoryStore(run_id=config.name)
    store.save_cloud(pretrained)
    state = CampaignState(run_id=store.run_id, version=pretrained.version, kept_versions=[pretrained.version],
                          best_val_acc=pretrained.best_val_acc)
    coordinator = CycleCoordinator(fleet, config, strategy=strategy, recorder=recorder, store=store, state=state)
    coordinator.connect()
    return coordinator
