"""The EdgeActor: :class:`~eclm.pipelines.edge_service.EdgeService` placed on an ``edge`` node."""

from __future__ import annotations

import ray

from eclm.config import PlatformConfig
from eclm.pipelines.edge_service import EdgeService
from eclm.resources import EDGE_RESOURCE, device_resource

EdgeActor = ray.remote(EdgeService)


def create_edge_actor(cfg: PlatformConfig, index: int, stream_state: dict | None = None):
    """Start the actor of device ``index``; it needs one ``edge`` slot, and the per-device
    resource ``device:<node>`` when the config pins it to a node."""
    device = cfg.devices[index]
    resources = {EDGE_RESOURCE: 1}
    if device.node:
        resources[device_resource(device.node)] = 0.001
    return EdgeActor.options(
        name=f"eclm-edge-{cfg.name}-{device.name}",
        num_cpus=cfg.ray.edge_cpus,
        resources=resources,
        max_restarts=0,
    ).remote(cfg.model_dump_json(), index, cfg.ray.threads_per_actor, stream_state)
