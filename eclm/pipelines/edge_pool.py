"""Pooled edge mode: one worker process hosts many virtual devices.

One actor per device stops scaling on one machine long before the device count a campaign
simulates (every actor is a process with its own torch). An :class:`EdgePool` keeps the state
of several :class:`~eclm.pipelines.edge_service.EdgeService` devices in one process between
cycles and serves calls addressed to any of them; calls to devices of one pool run one at a
time, calls to different pools run in parallel. The devices of a pool share one copy of the
dataset (:func:`eclm.data.load_dataset`).

Its methods are exactly the device endpoint's (:class:`~eclm.campaign.endpoints.DeviceEndpoint`),
each with the device's name first: ``pool.adapt(name)``, ``pool.summary(name, selector)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from eclm.campaign.endpoints import DEVICE_METHODS
from eclm.config import PlatformConfig
from eclm.pipelines.edge_service import EdgeService


class EdgePool:
    """Hosts the devices ``device_indices`` of the config.

    Args:
        config: The platform config.
        device_indices: Indices (into ``config.devices``) of the devices this pool serves.
        threads: torch threads for this process.
        store_root: Directory holding one store per device (``<store_root>/<device>``), or ``None``.
        resume_at: Per device, the newest stream step to resume from (a resumed campaign).
    """

    def __init__(self, config: PlatformConfig, device_indices: list[int], threads: int = 1,
                 store_root: Path | str | None = None, resume_at: Mapping[str, int] | None = None) -> None:
        self.devices: dict[str, EdgeService] = {}
        for i in device_indices:
            name = config.devices[i].name
            store = Path(store_root) / name if store_root is not None else None
            self.devices[name] = EdgeService(config, i, threads, store, (resume_at or {}).get(name))

    def hosted(self) -> list[str]:
        return list(self.devices)

    def _device(self, device: str) -> EdgeService:
        if device not in self.devices:
            raise KeyError(f"device {device!r} is not hosted by this pool ({sorted(self.devices)})")
        return self.devices[device]


def _forwarder(method: str) -> Callable[..., Any]:
    def forward(self: EdgePool, device: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._device(device), method)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = method
    forward.__doc__ = f"``EdgeService.{method}`` of the hosted device ``device``."
    return forward


for _method in sorted(DEVICE_METHODS):
    setattr(EdgePool, _method, _forwarder(_method))


__all__ = ["EdgePool"]
