"""The in-process binding of the endpoint protocols: services called directly in this process.

Unit tests and benchmarks run the very cycle the platform runs against plain services (or
scripted stand-ins); a call runs at once and its result or exception is kept until gathered.
An endpoint whose service raises :class:`~eclm.campaign.endpoints.EndpointDead` stays dead
(every later call fails with kind ``dead``) until the fleet restarts it, as a crashed process
would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from eclm.campaign.endpoints import (
    CLOUD_METHODS,
    DEVICE_METHODS,
    CallFailure,
    EndpointDead,
    Pending,
)
from eclm.campaign.messages import CloudSnapshot

T = TypeVar("T")


class LocalPending(Pending[T], Generic[T]):
    """A finished in-process call: its value, or why it failed."""

    __slots__ = ("value", "failure")

    def __init__(self, value: T | None = None, failure: CallFailure | None = None) -> None:
        self.value, self.failure = value, failure


def _failure(err: BaseException) -> CallFailure:
    kind = "dead" if isinstance(err, EndpointDead) else "error"
    first = str(err).splitlines()[0] if str(err) else ""
    return CallFailure(kind, type(err).__name__, first)


def _resolve(value: Any) -> Any:
    """A call argument with pending results replaced by their values (lists/tuples included)."""
    if isinstance(value, LocalPending):
        if value.failure is not None:
            raise _DependencyFailed(value.failure)
        return value.value
    if isinstance(value, list | tuple):
        return type(value)(_resolve(v) for v in value)
    return value


class _DependencyFailed(Exception):
    def __init__(self, failure: CallFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class LocalMethod:
    """One method of a :class:`LocalEndpoint`; calling it runs the service method now."""

    def __init__(self, endpoint: LocalEndpoint, name: str) -> None:
        self.endpoint, self.name = endpoint, name

    def _run(self, args: tuple, kwargs: dict) -> tuple[Any, CallFailure | None]:
        if self.endpoint.dead:
            return None, CallFailure("dead", "EndpointDead", f"{self.endpoint.label} is dead")
        try:
            args, kwargs = _resolve(args), {k: _resolve(v) for k, v in kwargs.items()}
            return getattr(self.endpoint.service, self.name)(*args, **kwargs), None
        except _DependencyFailed as err:
            return None, err.failure
        except Exception as err:  # noqa: BLE001 - a failing call is a result, as over Ray
            if isinstance(err, EndpointDead):
                self.endpoint.dead = True
            return None, _failure(err)

    def __call__(self, *args: Any, **kwargs: Any) -> LocalPending:
        value, failure = self._run(args, kwargs)
        return LocalPending(value, failure)

    def many(self, n: int, *args: Any, **kwargs: Any) -> list[LocalPending]:
        """Call a method that returns a sequence of ``n`` results; one pending per result."""
        value, failure = self._run(args, kwargs)
        if failure is None and (not isinstance(value, list | tuple) or len(value) != n):
            failure = CallFailure("error", "ValueError", f"{self.name} returned {type(value).__name__}, not {n} results")
        if failure is not None:
            return [LocalPending(None, failure) for _ in range(n)]
        return [LocalPending(v) for v in value]


class LocalEndpoint:
    """An endpoint over a service object, forwarding only the protocol's methods.

    Args:
        service: The service (``CloudService``, ``EdgeService`` or a scripted stand-in).
        methods: The protocol's method names.
        label: Name used in failure messages.
    """

    def __init__(self, service: Any, methods: frozenset[str], label: str) -> None:
        self.service, self.methods, self.label = service, methods, label
        self.dead = False

    @property
    def name(self) -> str:
        return self.label

    def __getattr__(self, name: str) -> LocalMethod:
        if name.startswith("_") or name not in self.methods:
            raise AttributeError(f"{self.label}: {name!r} is not an endpoint method")
        return LocalMethod(self, name)


class LocalFleet:
    """Services in this process behind the endpoint protocols.

    Args:
        cloud_factory: Builds a fresh cloud service (called again by :meth:`recreate_cloud`).
        device_factories: Per device name, builds its service (called again on restart; a real
            ``EdgeService`` resumes from its device store).
    """

    def __init__(self, cloud_factory: Callable[[], Any], device_factories: Mapping[str, Callable[[], Any]]) -> None:
        self._cloud_factory = cloud_factory
        self._device_factories = dict(device_factories)
        self.cloud = LocalEndpoint(cloud_factory(), CLOUD_METHODS, "cloud")
        self.devices = {n: LocalEndpoint(f(), DEVICE_METHODS, n) for n, f in self._device_factories.items()}

    def gather(self, calls: Mapping[Any, Any], timeout: float | None = None,
               each: Callable[[Any, Any], None] | None = None) -> tuple[dict[Any, Any], dict[Any, CallFailure]]:
        results, failures = {}, {}
        for key, pending in calls.items():
            if pending.failure is not None:
                failures[key] = pending.failure
            else:
                results[key] = pending.value
                if each is not None:
                    each(key, pending.value)
        return results, failures

    def done(self, pending: Any) -> bool:
        return True  # a local call runs when it is submitted

    def share(self, value: Any) -> Any:
        return value

    def restart_devices(self, names: Sequence[str]) -> None:
        for name in names:
            self.devices[name] = LocalEndpoint(self._device_factories[name](), DEVICE_METHODS, name)

    def recreate_cloud(self, snapshot: CloudSnapshot | None) -> None:
        self.cloud = LocalEndpoint(self._cloud_factory(), CLOUD_METHODS, "cloud")
        if snapshot is not None:
            self.cloud.service.restore(snapshot)

    def close(self) -> None:
        """Nothing to stop: the services go with this object."""


__all__ = ["LocalEndpoint", "LocalFleet", "LocalMethod", "LocalPending"]
