"""Thin Ray actor shells over the pure services (the only Ray-aware code besides ``runtime``).

The services are plain classes (``eclm.pipelines.cloud_service`` / ``edge_service``);
``ray.remote`` is applied here, where actors are created, with resources from the config (the
Ray Train v2 pattern). Actor methods are the services' methods: each takes and returns plain
values or safetensors bytes.
"""

from eclm.actors.cloud import create_cloud_actor
from eclm.actors.edge import PooledDevice, create_edge_actor, create_edge_pool

__all__ = ["PooledDevice", "create_cloud_actor", "create_edge_actor", "create_edge_pool"]
