"""The stage actor: :class:`~eclm.serving.worker.StageWorker` placed as one (emulated) edge node.

Thin shell: ``ray.remote`` is applied here, where stage actors are created, with resources from
the serving config. Methods are the worker's; activations arrive as Ray object refs resolved by
Ray, weights as safetensors bytes, everything else as plain dicts.
"""

from __future__ import annotations

import ray

from eclm.resources import device_resource
from eclm.serving.config import ServingConfig
from eclm.serving.worker import NodeSettings, StageWorker

StageActor = ray.remote(StageWorker)


def create_stage_actor(config: ServingConfig, node: int, name: str | None = None):
    """Start the stage actor of node ``node``.

    It reserves ``stage_actor_cpus`` CPUs; with ``node_labels`` set it also asks for the custom
    resource ``device:<label>`` so that it lands on that real node. ``max_concurrency=1``: one
    forward pass at a time, as on a single-core node; control calls queue behind forwards.
    ``max_restarts=0``: a dead stage is replaced by the coordinator, which reloads its blocks.
    """
    resources = {}
    if config.node_labels is not None:
        resources[device_resource(config.node_labels[node])] = 0.001
    options = {"num_cpus": config.stage_actor_cpus, "resources": resources, "max_concurrency": 1, "max_restarts": 0}
    if name:
        options["name"] = name
    return StageActor.options(**options).remote(NodeSettings.from_config(config, node).model_dump())
