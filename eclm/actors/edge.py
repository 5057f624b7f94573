"""The EdgeActor: :class:`~eclm.pipelines.edge_service.EdgeService` placed on an ``edge`` node,
and the pooled worker (:class:`~eclm.pipelines.edge_pool.EdgePool`) hosting many virtual devices."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import ray

from eclm.config import PlatformConfig
from eclm.gateway.remote_device import RemoteDevice
from eclm.pipelines.edge_pool import EdgePool
from eclm.pipelines.edge_service import EdgeService
from eclm.resources import EDGE_RESOURCE, node_selector

EdgeActor = ray.remote(EdgeService)
EdgePoolActor = ray.remote(EdgePool)
GatewayProxyActor = ray.remote(RemoteDevice)


def create_edge_actor(cfg: PlatformConfig, index: int, store_dir: Path | None = None, resume_at: int | None = None):
    """Start the actor of device ``index``; it needs one ``edge`` slot, and the node labelled
    ``eclm/node=<node>`` when the config pins it to a node (``eclm.resources.node_selector``).
    It resumes from its store ``store_dir``.

    A device with a ``gateway`` runs outside the cluster: its actor is a
    :class:`~eclm.gateway.remote_device.RemoteDevice` proxy (I/O only: no CPU or ``edge`` slot is
    reserved for it) and the device keeps its own store."""
    device = cfg.devices[index]
    if device.gateway is not None:
        return GatewayProxyActor.options(
            num_cpus=0, label_selector=node_selector(device.node) if device.node else None, max_restarts=0,
        ).remote(device.name, device.gateway, cfg.ray.call_timeout_s)
    return EdgeActor.options(
        num_cpus=cfg.ray.edge_cpus,
        resources={EDGE_RESOURCE: 1},
        label_selector=node_selector(device.node) if device.node else None,
        max_restarts=0,
    ).remote(cfg, index, cfg.ray.threads_per_actor, store_dir, resume_at)


def create_edge_pool(cfg: PlatformConfig, indices: list[int], store_root: Path | None = None,
                     resume_at: Mapping[str, int] | None = None, node: str | None = None):
    """Start a pooled edge worker hosting the devices ``indices`` (one ``edge`` slot), on the node
    labelled ``eclm/node=<node>`` when ``node`` is given (``ray.pool_nodes``)."""
    return EdgePoolActor.options(
        num_cpus=cfg.ray.edge_cpus,
        resources={EDGE_RESOURCE: 1},
        label_selector=node_selector(node) if node else None,
        max_restarts=0,
    ).remote(cfg, indices, cfg.ray.threads_per_actor, store_root, dict(resume_at or {}))
