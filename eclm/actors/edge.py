"""The EdgeActor: :class:`~eclm.pipelines.edge_service.EdgeService` placed on an ``edge`` node."""

from __future__ import annotations

import ray

from eclm.config import PlatformConfig
from eclm.pipelines.edge_pool import EdgePool
from eclm.pipelines.edge_service import EdgeService
from eclm.resources import EDGE_RESOURCE, node_selector

EdgeActor = ray.remote(EdgeService)


def create_edge_actor(cfg: PlatformConfig, index: int, stream_state: dict | None = None):
    """Start the actor of device ``index``; it needs one ``edge`` slot, and the node labelled
    ``eclm/node=<node>`` when the config pins it to a node (``eclm.resources.node_selector``)."""
    device = cfg.devices[index]
    return EdgeActor.options(
        name=f"eclm-edge-{cfg.name}-{device.name}",
        num_cpus=cfg.ray.edge_cpus,
        resources={EDGE_RESOURCE: 1},
        label_selector=node_selector(device.node) if device.node else None,
        max_restarts=0,
    ).remote(cfg.model_dump_json(), index, cfg.ray.threads_per_actor, stream_state)


EdgePoolActor = ray.remote(EdgePool)


def create_edge_pool(cfg: PlatformConfig, indices: list[int], stream_states: dict[str, dict] | None = None):
    """Start a pooled edge worker hosting the devices ``indices`` (one ``edge`` slot)."""
    return EdgePoolActor.options(
        num_cpus=cfg.ray.edge_cpus,
        resources={EDGE_RESOURCE: 1},
        max_restarts=0,
    ).remote(cfg.model_dump_json(), indices, cfg.ray.threads_per_actor, stream_states)


class PooledDevice:
    """Looks like a device's actor handle (``handle.method.remote(...)``) but routes the call
    through the pool that hosts the device."""

    def __init__(self, pool, device: str) -> None:
        self.pool = pool
        self.device = device

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return _PooledMethod(self.pool, self.device, method)


class _PooledMethod:
    def __init__(self, pool, device: str, method: str) -> None:
        self.pool, self.device, self.method = pool, device, method

    def remote(self, *args, **kwargs):
        return self.pool.call.remote(self.device, self.method, *args, **kwargs)
