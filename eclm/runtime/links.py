"""Measuring device links from the driver: time shipping bytes to each device that asks for it."""

from __future__ import annotations

from eclm.campaign.messages import Resources
from eclm.config import PlatformConfig
from eclm.runtime.ray_fleet import RayFleet
from eclm.runtime.ray_runtime import time_call


def measure_links(fleet: RayFleet, cfg: PlatformConfig, nbytes: int = 4 << 20) -> dict[str, float]:
    """For devices with ``measure: true`` and no configured bandwidth, time shipping ``nbytes``
    to the device and set the measured link bandwidth (Mbit/s) as its resource.

    Returns:
        ``{device: Mbit/s}`` of the links measured.
    """
    from eclm.pipelines.profiler import bandwidth_mbps

    payload, measured = bytes(nbytes), {}
    for device in cfg.devices:
        if not device.measure or device.bandwidth_mbps is not None:
            continue
        edge = fleet.devices[device.name]
        empty = time_call(lambda e=edge: e.echo_size(b"").ref)
        full = time_call(lambda e=edge: e.echo_size(payload).ref)
        mbps = bandwidth_mbps(nbytes, full, empty)
        if mbps is not None:
            fleet.gather({"e": edge.set_resources(Resources(bandwidth_mbps=mbps))})
            measured[device.name] = mbps
    return measured


__all__ = ["measure_links"]
