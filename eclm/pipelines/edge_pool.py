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

from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from eclm.campaign.endpoints import DEVICE_METHODS
from eclm.config import PlatformConfig
from eclm.data import load_dataset
from eclm.modules import ModuleSelector
from eclm.pipelines.edge_service import EdgeService, device_skeleton


class EdgePool:
    """Hosts the devices ``device_indices`` of the config.

    With device stores, at most ``config.ray.pool_resident_devices`` devices are kept in memory
    (least recently called first out); a device out of memory is only its store on disk and is
    rebuilt from it when it is next called. Every device writes its store after every change, so
    dropping one from memory loses nothing. Without stores every device stays in memory.

    Args:
        config: The platform config.
        device_indices: Indices (into ``config.devices``) of the devices this pool serves.
        threads: torch threads for this process.
        store_root: Directory holding one store per device (``<store_root>/<device>``), or ``None``.
        resume_at: Per device, the newest stream step to resume from (a resumed campaign).
    """

    def __init__(self, config: PlatformConfig, device_indices: list[int], threads: int = 1,
                 store_root: Path | str | None = None, resume_at: Mapping[str, int] | None = None) -> None:
        self.cfg, self.threads = config, threads
        self.store_root = Path(store_root) if store_root is not None else None
        self.resume_at = dict(resume_at or {})
        self.indices = {config.devices[i].name: i for i in device_indices}
        self.limit = config.ray.pool_resident_devices if self.store_root is not None else None
        data, _ = load_dataset(config.data)
        self.skeleton = device_skeleton(config, data.num_classes)  # shared: extraction copies it
        b = config.backbone  # shared too: every device loads the cloud's one selector
        self.selector = ModuleSelector(self.skeleton.layer_sizes, config.data.channels, b.selector_width,
                                       b.selector_dim)
        self.devices: OrderedDict[str, EdgeService] = OrderedDict()  # built on their first call
        self.loads = 0  # devices built (first call, or again after leaving memory)

    def hosted(self) -> list[str]:
        return list(self.indices)

    def resident(self) -> list[str]:
        """Devices in memory now, least recently called first."""
        return list(self.devices)

    def _device(self, device: str) -> EdgeService:
        if device not in self.indices:
            raise KeyError(f"device {device!r} is not hosted by this pool ({sorted(self.indices)})")
        if device in self.devices:
            self.devices.move_to_end(device)
            return self.devices[device]
        store = self.store_root / device if self.store_root is not None else None
        service = EdgeService(self.cfg, self.indices[device], self.threads, store, self.resume_at.pop(device, None),
                              skeleton_model=self.skeleton, selector_model=self.selector)
        self.devices[device] = service
        self.loads += 1
        while self.limit is not None and len(self.devices) > self.limit:
            self.devices.popitem(last=False)  # its state is in its store already
        return service


def _forwarder(method: str) -> Callable[..., Any]:
    def forward(self: EdgePool, device: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._device(device), method)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = method
    forward.__doc__ = f"``EdgeService.{method}`` of the hosted device ``device``."
    return forward


for _method in sorted(DEVICE_METHODS):
    setattr(EdgePool, _method, _forwarder(_method))


__all__ = ["EdgePool"]
