"""The CloudActor: :class:`~eclm.pipelines.cloud_service.CloudService` placed on a ``cloud`` node."""

from __future__ import annotations

import ray

from eclm.config import PlatformConfig
from eclm.pipelines.cloud_service import CloudService
from eclm.resources import CLOUD_RESOURCE

CloudActor = ray.remote(CloudService)


def create_cloud_actor(cfg: PlatformConfig):
    """Start the cloud actor; it needs one unit of the custom ``cloud`` resource.

    ``max_restarts=0``: a dead cloud is recreated by the coordinator, which restores it from
    the campaign store (Ray's own restart would bring back a cloud without its versions).
    """
    return CloudActor.options(
        num_cpus=cfg.ray.cloud_cpus,
        resources={CLOUD_RESOURCE: 1},
        max_concurrency=1,
        max_restarts=0,
    ).remote(cfg, cfg.ray.threads_per_actor)
