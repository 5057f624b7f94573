"""The Ray binding of the endpoint protocols: the cloud and every device as Ray actors.

A call on an endpoint is ``actor.method.remote(...)`` and its pending result the object ref, so a
result can be passed straight into another actor's call without passing through the driver. In
pooled mode (``ray.edge_pool_size``) a device endpoint calls its pool's forwarder with the
device's name first; pools are spread over the nodes ``ray.pool_nodes`` names (by node label). Only the protocol's methods can be called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

from eclm.actors import create_cloud_actor, create_edge_actor, create_edge_pool
from eclm.campaign.endpoints import CLOUD_METHODS, DEVICE_METHODS, CallFailure, Pending
from eclm.campaign.messages import CloudSnapshot
from eclm.config import PlatformConfig
from eclm.runtime.ray_runtime import gather, kill


class RayPending(Pending):
    """An object ref in flight."""

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref


def _ref(value: Any) -> Any:
    return value.ref if isinstance(value, RayPending) else value


class _RayMethod:
    def __init__(self, actor: Any, name: str, prefix: tuple) -> None:
        self.actor, self.name, self.prefix = actor, name, prefix

    def __call__(self, *args: Any, **kwargs: Any) -> RayPending:
        method = getattr(self.actor, self.name)
        return RayPending(method.remote(*self.prefix, *map(_ref, args), **{k: _ref(v) for k, v in kwargs.items()}))

    def many(self, n: int, *args: Any, **kwargs: Any) -> list[RayPending]:
        """A call returning ``n`` results, each its own object ref (``num_returns=n``)."""
        method = getattr(self.actor, self.name).options(num_returns=n)
        refs = method.remote(*self.prefix, *map(_ref, args), **{k: _ref(v) for k, v in kwargs.items()})
        return [RayPending(r) for r in (refs if n > 1 else [refs])]


class RayEndpoint:
    """An endpoint over an actor handle (for a pooled device: the pool and the device's name).

    Args:
        actor: The actor handle.
        methods: The protocol's method names.
        label: Endpoint name (the device's, or ``"cloud"``).
        pooled: Whether ``actor`` is a pool (calls then carry the device name first).
    """

    def __init__(self, actor: Any, methods: frozenset[str], label: str, pooled: bool = False) -> None:
        self.actor, self.methods, self.label, self.pooled = actor, methods, label, pooled

    @property
    def name(self) -> str:
        return self.label

    def __getattr__(self, name: str) -> _RayMethod:
        if name.startswith("_") or name not in self.methods:
            raise AttributeError(f"{self.label}: {name!r} is not an endpoint method")
        return _RayMethod(self.actor, name, (self.label,) if self.pooled else ())


class RayFleet:
    """Starts and heals the actors of a campaign.

    Args:
        config: The platform config.
        store_root: Directory of the device stores (``<store_root>/<device>``), or ``None``.
        resume_at: Per device, the newest stream step its store may be resumed from.
        snapshot: Cloud state to restore the new cloud actor to (a resumed campaign).
        defer_devices: Create only the cloud actor now and the device actors at
            :meth:`start_devices`; on a small machine the cloud is then not slowed by every
            device's process importing torch at the same time, and the devices' start-up can
            overlap the cloud's offline stage.
    """

    def __init__(self, config: PlatformConfig, store_root: Path | None = None,
                 resume_at: Mapping[str, int] | None = None, snapshot: CloudSnapshot | None = None,
                 defer_devices: bool = False) -> None:
        self.cfg, self.store_root, self.resume_at = config, store_root, dict(resume_at or {})
        self.names = [d.name for d in config.devices]
        self._actors: dict[str, Any] = {}  # device -> actor or pool handle
        self.cloud = RayEndpoint(create_cloud_actor(config), CLOUD_METHODS, "cloud")
        self.devices: dict[str, RayEndpoint] = {}
        if not defer_devices:
            self.start_devices()
        if snapshot is not None:
            self._must(self.cloud.restore(snapshot), "restoring the cloud")

    def start_devices(self) -> None:
        """Create the device actors not created yet (all of them, unless the fleet was built
        with ``defer_devices``, when this must be called before the first cycle)."""
        missing = [i for i, name in enumerate(self.names) if name not in self.devices]
        if missing:
            self._start_devices(missing)

    def _must(self, pending: RayPending, what: str) -> Any:
        results, failures = self.gather({"x": pending}, self.cfg.ray.call_timeout_s)
        if failures:
            raise RuntimeError(f"{what} failed: {failures['x']}")
        return results["x"]

    def _store(self, name: str) -> Path | None:
        return self.store_root / name if self.store_root is not None else None

    def _start_devices(self, indices) -> None:
        indices, pool_size = sorted(indices), self.cfg.ray.edge_pool_size
        remote = {i for i, d in enumerate(self.cfg.devices) if d.gateway is not None}  # never pooled
        for i in indices:
            if pool_size is None or i in remote:
                name = self.names[i]
                self._actors[name] = create_edge_actor(self.cfg, i, self._store(name), self.resume_at.get(name))
                self.devices[name] = RayEndpoint(self._actors[name], DEVICE_METHODS, name)
        if pool_size is None:
            return
        # Pool p hosts the devices i with i % pool_size == p; a restart recreates whole pools.
        nodes = self.cfg.ray.pool_nodes
        for p in sorted({i % pool_size for i in indices if i not in remote}):
            members = [i for i in range(len(self.names)) if i % pool_size == p and i not in remote]
            pool = create_edge_pool(self.cfg, members, self.store_root, self.resume_at,
                                    nodes[p % len(nodes)] if nodes else None)
            for i in members:
                self._actors[self.names[i]] = pool
                self.devices[self.names[i]] = RayEndpoint(pool, DEVICE_METHODS, self.names[i], pooled=True)

    def actor(self, name: str) -> Any:
        """The actor handle behind device ``name`` (its pool in pooled mode), for inspection and
        fault-injection tests; the coordinator never uses it."""
        return self._actors[name]

    # ------------------------------------------------------------------ Fleet protocol
    def gather(self, calls: Mapping[Any, Any], timeout: float | None = None,
               each: Callable[[Any, Any], None] | None = None) -> tuple[dict[Any, Any], dict[Any, CallFailure]]:
        refs = {key: _ref(p) for key, p in calls.items()}
        results, failures = gather(refs, timeout if timeout is not None else self.cfg.ray.call_timeout_s, each)
        return results, {k: _call_failure(f) for k, f in failures.items()}

    def done(self, pending: Any) -> bool:
        ready, _ = ray.wait([_ref(pending)], timeout=0)
        return bool(ready)

    def share(self, value: Any) -> Any:
        return ray.put(value)

    def restart_devices(self, names: Sequence[str]) -> None:
        """Kill and recreate the actors of ``names`` (whole pools in pooled mode); they resume
        from their stores, without a step limit (the campaign goes on from where they were)."""
        doomed = {id(self._actors[n]) for n in names if n in self._actors}
        affected = sorted({*names, *(n for n, a in self._actors.items() if id(a) in doomed)})
        for name in affected:  # a pool takes all its devices down with it
            kill(self._actors.get(name))
            self.resume_at.pop(name, None)
        self._start_devices({self.names.index(n) for n in affected})

    def recreate_cloud(self, snapshot: CloudSnapshot | None) -> None:
        kill(self.cloud.actor)
        self.cloud = RayEndpoint(create_cloud_actor(self.cfg), CLOUD_METHODS, "cloud")
        if snapshot is not None:
            self._must(self.cloud.restore(snapshot), "restoring the recreated cloud")

    def close(self) -> None:
        for actor in {id(a): a for a in [self.cloud.actor, *self._actors.values()]}.values():
            kill(actor)
        self._actors, self.devices = {}, {}


def _call_failure(f) -> CallFailure:
    """The runtime's :class:`~eclm.failures.ActorFailure` as the protocol's :class:`CallFailure`."""
    error_type = f.error_type or ""
    message = f.message[len(error_type) + 2:] if error_type and f.message.startswith(f"{error_type}: ") else f.message
    return CallFailure(f.kind, error_type, message)


__all__ = ["RayEndpoint", "RayFleet", "RayPending"]
