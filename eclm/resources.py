"""Names of the Ray custom resources that place eclm work on the right machines.

The cluster's start commands (``cluster.yaml``) give the head node ``cloud`` and each edge
worker ``edge``. A device whose config names a node (``node: <label>``) additionally asks for
``device:<label>``, which the operator adds to that one worker's resources. Actors request these names, so both sides must
agree on the spelling: this module is the single source, and a unit test checks ``cluster.yaml``
against it.
"""

from __future__ import annotations

CLOUD_RESOURCE = "cloud"
"""Custom resource of the cloud (head) node: cloud model, merge, coordinator."""

EDGE_RESOURCE = "edge"
"""Custom resource of edge workers: one unit per device actor the worker may host."""

DEVICE_RESOURCE_PREFIX = "device:"


def device_resource(name: str) -> str:
    """Custom resource that pins device actors to the node labelled ``name``.

    Args:
        name: Node label a device config pins to (its ``node`` field), non-empty, no whitespace.

    Returns:
        ``"device:<name>"``, e.g. ``device_resource("kitchen-pi") == "device:kitchen-pi"``.

    Raises:
        TypeError: If ``name`` is not a string.
        ValueError: If ``name`` is empty or contains whitespace (it would not survive the
            ``--resources`` JSON / shell quoting an operator types).
    """
    if not isinstance(name, str):
        raise TypeError(f"device name must be a string, got {type(name).__name__}")
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"device name must be non-empty without whitespace, got {name!r}")
    return f"{DEVICE_RESOURCE_PREFIX}{name}"
