"""The two endpoint protocols the cycle coordinator talks to, and the fleet that binds them.

The coordinator never calls a service directly: it *submits* calls to a cloud endpoint and to
device endpoints, gets :class:`Pending` results back, and *gathers* them with failures
(Flower's ``Grid``, Ray Train's worker group). A binding provides the endpoints:

* :mod:`eclm.campaign.local` runs the services in this process (unit tests, benchmarks);
* :mod:`eclm.runtime.ray_fleet` runs them as Ray actors (one actor per device, or pooled).

A pending result may be passed as an argument to another call of the same binding; the binding
resolves it (Ray passes object refs between actors without the driver touching the data). A call
that returns several results at once (the split protocol's server step) is made with
``endpoint.method.many(n, *args)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from eclm.campaign.messages import (
    AttributedUpdate,
    CloudInfo,
    CloudSnapshot,
    DeviceMetrics,
    DeviceSummary,
    DeviceUpdate,
    DriftReport,
    EpochRecord,
    InstallReport,
    MergeOutcome,
    Resources,
    StreamPosition,
    SubModelPackage,
    SwapReport,
)

T = TypeVar("T")
K = TypeVar("K")

FailureKind = Literal["dead", "error", "timeout"]


class Pending(Generic[T]):
    """A submitted call whose result is gathered later (a Ray object ref, or a local result)."""


@dataclass(frozen=True)
class CallFailure:
    """Why one call produced no result.

    Attributes:
        kind: ``dead`` (the endpoint's process is gone), ``error`` (the call raised) or ``timeout``.
        error_type: The root cause's exception type name (``""`` when there is none).
        message: The root cause's message, one line.
    """

    kind: FailureKind
    error_type: str = ""
    message: str = ""

    def __str__(self) -> str:
        cause = f"{self.error_type}: {self.message}" if self.error_type else self.message
        return f"{self.kind}: {cause}"


class EndpointDead(RuntimeError):
    """Raised by an in-process endpoint to act like a process that died (fault-injection tests)."""


class CloudEndpoint(Protocol):
    """What the coordinator asks of the cloud (see :class:`~eclm.pipelines.cloud_service.CloudService`)."""

    def info(self) -> Pending[CloudInfo]: ...
    def pretrain(self) -> Pending[list[EpochRecord]]: ...
    def pretrain_begin(self) -> Pending[int]: ...
    def pretrain_epoch(self) -> Pending[EpochRecord]: ...
    def validation_accuracy(self) -> Pending[float]: ...
    def selector_payload(self) -> Pending[bytes]: ...
    def model_payload(self) -> Pending[bytes]: ...
    def derive(self, summary: DeviceSummary) -> Pending[SubModelPackage]: ...
    def prescreen(self, updates: list[AttributedUpdate]) -> Pending[int]: ...
    def merge(self, updates: list[AttributedUpdate]) -> Pending[MergeOutcome]: ...
    def snapshot(self) -> Pending[CloudSnapshot]: ...
    def restore(self, snapshot: CloudSnapshot) -> Pending[int]: ...
    def state_digest(self) -> Pending[str]: ...
    def split_route(self, summary: DeviceSummary) -> Pending[str | None]: ...
    def split_prepare(self, devices: list[dict]) -> Pending[dict]: ...
    def split_epoch_plan(self, epoch: int) -> Pending[list[list[int]]]: ...
    def split_server_step(self, epoch: int, step: int, *messages: Any) -> Pending[list]: ...
    def split_aggregate(self, *ends: Any) -> Pending[list]: ...
    def split_evaluate(self, message: Any) -> Pending[dict]: ...
    def split_finish(self) -> Pending[dict[str, DeviceUpdate]]: ...
    def split_abort(self) -> Pending[None]: ...


class DeviceEndpoint(Protocol):
    """What the coordinator asks of one device (see :class:`~eclm.pipelines.edge_service.EdgeService`)."""

    name: str

    def advance(self, steps: int) -> Pending[StreamPosition]: ...
    def drift(self) -> Pending[DriftReport]: ...
    def profile(self) -> Pending[Resources]: ...
    def set_resources(self, changes: Resources) -> Pending[Resources]: ...
    def summary(self, selector: bytes | Pending[bytes] | None) -> Pending[DeviceSummary]: ...
    def install(self, package: SubModelPackage) -> Pending[InstallReport]: ...
    def adapt(self) -> Pending[DeviceUpdate]: ...
    def evaluate(self) -> Pending[DeviceMetrics]: ...
    def shrink(self, changes: Resources | None = None) -> Pending[SwapReport | None]: ...
    def snapshot_model(self) -> Pending[bytes | None]: ...
    def echo_size(self, data: bytes) -> Pending[int]: ...
    def split_hello(self) -> Pending[dict]: ...
    def split_begin(self, payload: bytes, client_sizes: list[int], client_index: int) -> Pending[dict]: ...
    def split_forward(self, epoch: int, step: int, gradient: Any = None) -> Pending[bytes]: ...
    def split_backward(self, gradient: Any) -> Pending[None]: ...
    def split_epoch_end(self) -> Pending[dict]: ...
    def split_load(self, payload: Any) -> Pending[None]: ...
    def split_smash_test(self) -> Pending[bytes]: ...
    def split_end(self) -> Pending[dict]: ...


def protocol_methods(protocol: type) -> frozenset[str]:
    """The method names a protocol declares (what a binding may forward, and nothing else)."""
    return frozenset(name for name, value in vars(protocol).items()
                     if inspect.isfunction(value) and not name.startswith("_"))


CLOUD_METHODS = protocol_methods(CloudEndpoint)
DEVICE_METHODS = protocol_methods(DeviceEndpoint)


class Fleet(Protocol):
    """A binding: the cloud endpoint, the device endpoints, and how to wait for and heal them."""

    cloud: CloudEndpoint
    devices: Mapping[str, DeviceEndpoint]

    def gather(self, calls: Mapping[K, Pending[Any]], timeout: float | None = None,
               each: Callable[[K, Any], None] | None = None) -> tuple[dict[K, Any], dict[K, CallFailure]]:
        """Wait for every call; a dead endpoint, an exception or a timeout is a failure, not a crash.

        ``each(key, result)`` is called for every successful result as it arrives (in completion
        order where the binding runs calls concurrently), before the others are waited for."""
        ...

    def done(self, pending: Pending[Any]) -> bool:
        """Whether a submitted call has finished (with a result or a failure), without waiting."""
        ...

    def share(self, value: Any) -> Any:
        """A handle to pass one large value to many calls (Ray: the object store; local: the value)."""
        ...

    def restart_devices(self, names: Sequence[str]) -> None:
        """Replace the endpoints of ``names`` (their processes died); they resume from their stores."""
        ...

    def recreate_cloud(self, snapshot: CloudSnapshot | None) -> None:
        """Replace a dead cloud endpoint and restore it to ``snapshot``."""
        ...

    def close(self) -> None:
        """Stop every endpoint this fleet started."""
        ...


__all__ = [
    "CLOUD_METHODS",
    "DEVICE_METHODS",
    "CallFailure",
    "CloudEndpoint",
    "DeviceEndpoint",
    "EndpointDead",
    "FailureKind",
    "Fleet",
    "Pending",
    "protocol_methods",
]
