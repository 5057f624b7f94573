"""Pooled edge mode: one worker process hosts many virtual devices.

One actor per device stops scaling on one machine long before the device count a campaign
simulates (every actor is a process with its own torch). An :class:`EdgePool` keeps the state
of several :class:`~eclm.pipelines.edge_service.EdgeService` devices in one process between
cycles and serves calls addressed to any of them; calls to devices of one pool run one at a
time, calls to different pools run in parallel.
"""

from __future__ import annotations

from typing import Any

from eclm.pipelines.edge_service import EdgeService


class EdgePool:
    """Hosts the devices ``device_indices`` of the config.

    Args:
        config_json: The platform config as JSON.
        device_indices: Indices (into ``config.devices``) of the devices this pool serves.
        threads: torch threads for this process.
        stream_states: Optional ``{device name: stream state}`` to resume from.
    """

    def __init__(self, config_json: str, device_indices: list[int], threads: int = 1,
                 stream_states: dict[str, dict] | None = None) -> None:
        states = stream_states or {}
        self.devices: dict[str, EdgeService] = {}
        for i in device_indices:
            service = EdgeService(config_json, i, threads)
            if service.name in states:
                service.stream.load_state_dict(states[service.name])
            self.devices[service.name] = service

    def call(self, device: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of the hosted device ``device``.

        Raises:
            KeyError: If the device is not hosted here.
            AttributeError: If the method does not exist or is private.
        """
        if device not in self.devices:
            raise KeyError(f"device {device!r} is not hosted by this pool ({sorted(self.devices)})")
        if method.startswith("_"):
            raise AttributeError(f"private method {method!r} cannot be called remotely")
        return getattr(self.devices[device], method)(*args, **kwargs)

    def hosted(self) -> list[str]:
        return list(self.devices)
