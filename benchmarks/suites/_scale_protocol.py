"""The scale suite's protocol run (issue #13): many registered devices, a subset served per cycle.

One pooled campaign on real Ray: ``registered`` virtual devices in ``pool_size`` pools; every
cycle all of them take a data step (``Platform.observe``, timed apart) and ``served`` of them,
a different slice each cycle, are served (``Platform.run_cycle(devices)``, timed). Afterwards a few
of the last cycle's served devices repeat their adaptation in a plain spawned process
(:class:`~benchmarks.suites._plain_worker.PlainDevice`: same ``EdgeService``, data position and
adapted sub-model): divided by the cores, that is the compute bound the cycle is compared with.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.machine import usable_cores
from benchmarks.suites._plain_worker import PlainDevice
from benchmarks.suites._platform_bench import ScaleBenchConfig, campaign_config
from benchmarks.suites._process_tree import TreeMemorySampler


def served_slice(names: list[str], served: int, cycle: int) -> list[str]:
    """The devices served in ``cycle``: the next ``served`` names, wrapping around the list."""
    return [names[(cycle * served + j) % len(names)] for j in range(min(served, len(names)))]


def protocol_run(config: ScaleBenchConfig, workdir: Path, tracking_uri: str | None) -> dict:
    """Start, (pretrain,) ``protocol_cycles`` x (observe, serve a slice), shutdown; then the compute bound.

    Returns:
        ``{"registered", "served", "pool_size", "start_seconds", "cycles": [{"seconds", "observe_seconds",
        "durations", "failures", "decision", "bytes_up", "bytes_down"}], "peak_pss", "peak_rss", "compute": {...}}``.
    """
    from eclm.platform import Platform

    cfg = campaign_config(config.campaign, config.registered, workdir, name=f"scale-protocol-{config.registered}",
                          pool_size=config.pool_size, tracking_uri=tracking_uri)
    cycles, picks = [], []
    with TreeMemorySampler(interval_s=1.0, pss_every=4) as mem:
        platform = Platform(cfg, progress=False)
        t0 = time.perf_counter()
        platform.start()
        start_s = time.perf_counter() - t0
        try:
            platform.pretrain()  # with 0 offline epochs it only commits version 0, which cycles refer to
            for c in range(config.protocol_cycles):
                cycles.append(_served_cycle(platform, served_slice(platform.names, config.served, c)))
            mem.sample(pss=True)
            picks = [_adapted(platform, n) for n in cycles[-1]["devices"][: config.compute_devices]]
        finally:
            platform.shutdown()
    compute = compute_bound(cfg, picks)
    return {"registered": config.registered, "served": config.served, "pool_size": config.pool_size,
            "start_seconds": start_s, "cycles": cycles, "peak_pss": mem.peak_pss, "peak_rss": mem.peak_rss,
            "compute": compute}


def _served_cycle(platform, devices: list[str]) -> dict:
    t0 = time.perf_counter()
    platform.observe()
    observe_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = platform.run_cycle(devices, reason="benchmark")
    wall = time.perf_counter() - t0
    durations = dict(r.durations, log=max(0.0, wall - sum(r.durations.values())))
    return {"devices": devices, "seconds": wall, "observe_seconds": observe_s, "durations": durations,
            "failures": dict(r.failures), "decision": r.merge.decision, "bytes_up": sum(r.bytes_up.values()),
            "bytes_down": sum(r.bytes_down.values())}


def _adapted(platform, name: str) -> dict:
    """What a plain process needs to repeat device ``name``'s adaptation."""
    results, failures = platform.fleet.gather({name: platform.fleet.devices[name].snapshot_model()})
    if failures:
        raise RuntimeError(f"snapshot of {name} failed: {failures[name]}")
    return {"index": platform.names.index(name), "step": platform.state.positions[name],
            "snapshot": results[name], "costs": platform.info.costs}


def compute_bound(cfg, picks: list[dict]) -> dict:
    """Each picked device adapts twice in a plain process (the first is a warm-up); the second's
    wall seconds, averaged over the devices and divided by :func:`cores`, is the compute bound.

    Returns:
        ``{"plain_seconds": [per device], "cores", "seconds_per_device"}`` (``None`` without picks).
    """
    from eclm.campaign.messages import SubModelPackage
    from eclm.modules import unpack_state

    seconds = []
    for p in picks:
        _, spec, _ = unpack_state(p["snapshot"])
        package = SubModelPackage(device=cfg.devices[p["index"]].name, spec=spec, payload=p["snapshot"], version=0)
        with PlainDevice(cfg, p["index"], cfg.ray.threads_per_actor) as plain:
            plain.call("advance", p["step"])
            plain.call("install", package, p["costs"])
            plain.call("adapt")
            seconds.append(plain.call("adapt")["wall_seconds"])
    n = usable_cores()
    return {"plain_seconds": seconds, "cores": n,
            "seconds_per_device": statistics.fmean(seconds) / n if seconds else None}
