"""Names that place eclm work on the right machines: Ray custom resources and a node label.

The cluster's start commands (``cluster.yaml``) give the head node the custom resource ``cloud``
and each edge worker ``edge`` (counts: how many actors of that kind a machine hosts). A device
whose config names a node (``node: <name>``) is pinned with a Ray node label instead: its actor
asks for ``label_selector={"eclm/node": "<name>"}`` and only the machine started with
``ray start --labels eclm/node=<name>`` can host it (docs/cluster.md, "Pinning a device to a
node"). Actors use these names and ``cluster.yaml`` spells them; this module is the single
source, and a unit test checks ``cluster.yaml`` against it.
"""

from __future__ import annotations

import re

CLOUD_RESOURCE = "cloud"
"""Custom resource of the cloud (head) node: cloud model, merge, coordinator."""

EDGE_RESOURCE = "edge"
"""Custom resource of edge workers: one unit per device actor the worker may host."""

NODE_LABEL = "eclm/node"
"""Ray node label key naming an edge machine; devices pinned with ``node: <name>`` select on it."""

NODE_LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
"""Ray (Kubernetes) label value syntax: 1-63 characters, alphanumeric at both ends, ``-_.`` inside."""


def node_selector(name: str) -> dict[str, str]:
    """Ray ``label_selector`` that pins an actor to the node labelled ``eclm/node=<name>``.

    Args:
        name: The node name a device (``devices[].node``) or a serving stage (``node_labels``)
            is pinned to.

    Returns:
        ``{"eclm/node": name}``, e.g. ``node_selector("kitchen-pi") == {"eclm/node": "kitchen-pi"}``.

    Raises:
        TypeError: If ``name`` is not a string.
        ValueError: If ``name`` is not a valid Ray label value (the operator could not label a node
            with it: ``ray start --labels`` rejects it).
    """
    if not isinstance(name, str):
        raise TypeError(f"node name must be a string, got {type(name).__name__}")
    if not re.fullmatch(NODE_LABEL_VALUE_PATTERN, name):
        raise ValueError(f"node name must be 1-63 characters [A-Za-z0-9_.-], alphanumeric at both ends, got {name!r}")
    return {NODE_LABEL: name}
