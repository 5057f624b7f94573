"""Ray start-up bound to loopback, and failure-tolerant result collection."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# Must be set before Ray starts: makes a local Ray (and ray.cluster_utils.Cluster) bind to
# 127.0.0.1 instead of the machine's first non-loopback address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError  # noqa: E402

from eclm.resources import CLOUD_RESOURCE, EDGE_RESOURCE  # noqa: E402


@dataclass
class ActorFailure:
    """Why a call to one actor produced no result."""

    key: str
    kind: str  # "dead" | "error" | "timeout"
    message: str


def ray_started() -> bool:
    return ray.is_initialized()


def start_ray(address: str | None, *, num_cpus: float | None, num_devices: int) -> bool:
    """Start a local Ray on loopback (``address=None``) or connect to a cluster.

    A local Ray gets one ``cloud`` unit and one ``edge`` slot per device, so a single machine
    hosts the whole platform. Returns ``True`` if this call started/connected Ray (and so should
    shut it down), ``False`` if Ray was already initialised.

    Raises:
        ConnectionError: If the cluster at ``address`` cannot be reached.
    """
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(
            address="local",  # always a new local instance, never an unrelated Ray already running here
            num_cpus=num_cpus,
            resources={CLOUD_RESOURCE: 1, EDGE_RESOURCE: max(num_devices, 1)},
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as err:
            raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: {err}") from err
    return True


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def put(value: Any):
    return ray.put(value)


def kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead
        pass


def time_call(make_ref, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds for ``ray.get(make_ref())``."""
    import time

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ray.get(make_ref())
        best = min(best, time.perf_counter() - start)
    return best


def gather(refs: dict[str, Any], timeout: float) -> tuple[dict[str, Any], dict[str, ActorFailure]]:
    """Wait for every ref; a dead actor, an exception or a timeout is a failure, not a crash.

    Args:
        refs: ``{key: ObjectRef}``.
        timeout: Seconds to wait for all of them.

    Returns:
        ``(results, failures)`` keyed like ``refs``.
    """
    results: dict[str, Any] = {}
    failures: dict[str, ActorFailure] = {}
    if not refs:
        return results, failures
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    ready_set = set(ready)
    for key, ref in refs.items():
        if ref not in ready_set:
            failures[key] = ActorFailure(key, "timeout", f"no answer within {timeout:.0f}s")
            ray.cancel(ref, force=False)
            continue
        try:
            results[key] = ray.get(ref)
        except RayActorError as err:
            failures[key] = ActorFailure(key, "dead", f"actor died: {str(err).splitlines()[0]}")
        except RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            failures[key] = ActorFailure(key, "error", f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        except GetTimeoutError as err:
            failures[key] = ActorFailure(key, "timeout", str(err))
    return results, failures
