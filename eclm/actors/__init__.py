"""Thin Ray actor shells over the pure services (the only Ray-aware code besides ``runtime``).

The services are plain classes (``eclm.pipelines.cloud_service`` / ``edge_service`` /
``edge_pool``); ``ray.remote`` is applied here, where actors are created, with resources from the
config (the Ray Train v2 pattern). Actor methods are the services' methods: each takes and
returns the typed messages of :mod:`eclm.campaign.messages` (weights inside as safetensors bytes).
"""

from eclm.actors.cloud import create_cloud_actor
from eclm.actors.edge import create_edge_actor, create_edge_pool

__all__ = ["create_cloud_actor", "create_edge_actor", "create_edge_pool"]
