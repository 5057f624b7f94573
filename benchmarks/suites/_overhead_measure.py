"""Measurements of the ``platform_overhead`` suite (real Ray for the platform side).

* :func:`ray_side`: a real ``Platform`` (local Ray, MLflow on a temporary SQLite store) runs timed
  cycles; then, per thread count, an ``EdgeActor`` and a :class:`PlainDevice` holding the same
  sub-model and data stream run ``adapt`` alternately, and the plain process measures matmul
  FLOP/s with the same threads.
* :func:`in_process_side`: the same campaign's cycles through the platform's coordinator over
  in-process services, without Ray or logging (the compute the cycle cannot avoid), and the merge
  cost as the number of updates grows.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch

from benchmarks.suites._plain_worker import PlainDevice
from benchmarks.suites._platform_bench import (
    OverheadBenchConfig,
    campaign_config,
    in_process_cycle,
    local_campaign,
)
from eclm.campaign.endpoints import CloudEndpoint
from eclm.campaign.local import LocalPending
from eclm.campaign.messages import AttributedUpdate, CloudSnapshot, MergeOutcome, SubModelPackage
from eclm.campaign.strategy import ModularStrategy
from eclm.config import PlatformConfig
from eclm.data import load_dataset
from eclm.modules import CostTable, unpack_state
from eclm.pipelines.cloud_service import CloudService


def ray_side(config: OverheadBenchConfig, workdir: Path) -> dict:
    """Platform cycles on real Ray, then actor-vs-plain adaptation per thread count.

    Returns:
        ``{"cycles": [{"durations", "decision", "bytes_up", "bytes_down"}], "throughput": [per thread count],
        "flops_per_sample": forward FLOPs of the measured sub-model}``.
    """
    from eclm import runtime
    from eclm.actors import create_edge_actor
    from eclm.platform import Platform

    cfg = campaign_config(config.campaign, config.devices, workdir, name="overhead",
                          tracking_uri=f"sqlite:///{workdir}/mlruns.db")
    # A Ray already running in this process (the smoke tests share one) is used and left running.
    started = runtime.start_ray(None, num_cpus=None, num_devices=config.devices + 1)
    try:
        platform = Platform(cfg)
        platform.start()
        try:
            if config.campaign.offline_epochs:
                platform.pretrain()
            cycles = [_timed_ray_cycle(platform) for _ in range(config.cycles)]
            device = platform.names[0]
            snapshot = _get(platform.fleet, platform.fleet.devices[device].snapshot_model())
            step, costs = platform.state.positions[device], platform.info.costs
        finally:
            platform.shutdown()
        _, spec, _ = unpack_state(snapshot)
        package = SubModelPackage(device=device, spec=spec, payload=snapshot, version=0)
        flops = CostTable.from_dict(costs).total(spec)["flops"]
        throughput = []
        for threads in config.threads:
            cfg_t = cfg.model_copy(update={"name": f"overhead-t{threads}",
                                           "ray": cfg.ray.model_copy(update={"threads_per_actor": threads})})
            actor = create_edge_actor(cfg_t, 0)
            try:
                with PlainDevice(cfg_t, 0, threads) as plain:
                    throughput.append(_actor_vs_plain(runtime, actor, plain, step, package, costs, config, threads))
            finally:
                runtime.kill(actor)
        return {"cycles": cycles, "throughput": throughput, "flops_per_sample": flops}
    finally:
        if started:
            runtime.shutdown_ray()


def _timed_ray_cycle(platform) -> dict:
    """One cycle after the drift step (not timed); ``log`` is the rest of ``run_cycle`` beyond the
    coordinator's phases: recording the cycle (MLflow, journal, figures) and committing the store."""
    platform.observe()
    t0 = time.perf_counter()
    r = platform.run_cycle()
    wall = time.perf_counter() - t0
    durations = dict(r.durations, log=max(0.0, wall - sum(r.durations.values())))
    return {"durations": durations, "decision": r.merge.decision, "bytes_up": sum(r.bytes_up.values()),
            "bytes_down": sum(r.bytes_down.values()), "failures": dict(r.failures)}


def _actor_vs_plain(runtime, actor, plain: PlainDevice, step: int, package: SubModelPackage, costs: dict,
                    config: OverheadBenchConfig, threads: int) -> dict:
    """Alternate ``adapt`` between actor and plain process (order rotated each round); first round is warm-up.

    Both first move their data stream to ``step`` (the platform device's position) and install
    ``package`` (its adapted sub-model).
    """
    _get(runtime, actor.advance.remote(step))
    _get(runtime, actor.install.remote(package, costs))
    plain.call("advance", step)
    plain.call("install", package, costs)
    actor_runs, plain_runs = [], []
    for r in range(config.repeats + 1):
        order = ("actor", "plain") if r % 2 == 0 else ("plain", "actor")
        for side in order:
            if side == "actor":
                t0 = time.perf_counter()
                metrics = _get(runtime, actor.adapt.remote()).metrics
                run = {"wall_seconds": time.perf_counter() - t0, "train_seconds": metrics.train_seconds,
                       "batches": metrics.batches, "seconds_per_batch": metrics.seconds_per_batch}
                if r:
                    actor_runs.append(run)
            else:
                run = plain.call("adapt")
                if r:
                    plain_runs.append(run)
    # Same data, batch size and epochs on both sides: the plain process's sample count is the actor's.
    samples = statistics.median(run["samples"] for run in plain_runs)
    gflops = sorted(plain.call("gflops", config.matmul_size, config.matmul_repeats) for _ in range(5))
    return {"threads": threads, "samples_per_adapt": samples, "actor": actor_runs, "plain": plain_runs,
            "matmul_gflops": statistics.median(gflops), "matmul_gflops_all": gflops}


def _get(binding, pending, timeout: float = 3600.0):
    """The result of one call, gathered through ``binding`` (a fleet, or ``eclm.runtime`` for a raw ref)."""
    results, failures = binding.gather({"r": pending}, timeout)
    if failures:
        f = failures["r"]
        raise RuntimeError(f"call failed: {f.kind}: {f.message}")
    return results["r"]


def in_process_side(config: OverheadBenchConfig, workdir: Path) -> dict:
    """The Ray-free reference cycles and the merge-cost probe.

    Returns:
        ``{"cycles": [in_process_cycle records], "merge_scaling": [{"updates", "seconds", "decision",
        "accepted", "candidates"}]}``.
    """
    cfg = campaign_config(config.campaign, config.devices, workdir, name="overhead-inproc")
    pretrained = _pretrained(cfg)
    coordinator, clock = local_campaign(cfg, pretrained)
    cycles = []
    for _ in range(config.cycles):
        coordinator.observe()
        cycles.append(in_process_cycle(coordinator, clock)[0])
    return {"cycles": cycles, "merge_scaling": merge_scaling(config, workdir, (cfg, pretrained))}


class _CollectUploads(ModularStrategy):
    """eclm's delivery; the uploads are kept for the merge-cost probe instead of being merged."""

    def __init__(self) -> None:
        self.uploads: list[AttributedUpdate] = []

    def merge(self, cloud: CloudEndpoint, updates: list[AttributedUpdate]) -> LocalPending[MergeOutcome]:
        self.uploads = list(updates)
        return LocalPending(MergeOutcome.nothing("uploads kept for the merge-cost probe", 0))

    def arrived(self, cloud: CloudEndpoint, updates: list[AttributedUpdate]) -> None:
        """Nothing screened on arrival: the probe times the merge's whole work."""
        return None


def merge_scaling(config: OverheadBenchConfig, workdir: Path,
                  pretrained: tuple[PlatformConfig, CloudSnapshot] | None = None) -> list[dict]:
    """Time ``CloudService.merge`` (platform default merge settings) for growing numbers of updates.

    All counts merge into copies of the same pretrained cloud; the uploads of the first ``k``
    devices of one adaptation cycle (the platform's cycle, in-process) are used, so larger counts
    are supersets of smaller ones. ``pretrained``: a config and its pretrained cloud, reused when
    the proxy data are the same.
    """
    if not config.merge_scaling:
        return []
    shape = config.campaign.model_copy(update={"accepting_merge": False})
    cfg = campaign_config(shape, max(config.merge_scaling), workdir, name="overhead-merge")
    collect = _CollectUploads()
    coordinator, _ = local_campaign(cfg, _pretrained(cfg, pretrained), strategy=collect)
    coordinator.observe()
    coordinator.run_cycle(reason="merge-cost probe")
    cloud: CloudService = coordinator.fleet.cloud.service
    out = []
    for k in config.merge_scaling:
        probe = copy.deepcopy(cloud)
        calls = _count_candidates(probe)
        t0 = time.perf_counter()
        report = probe.merge(collect.uploads[:k])
        out.append({"updates": k, "seconds": time.perf_counter() - t0, "decision": report.decision,
                    "accepted": len(report.accepted), "candidates": calls[0] if calls else None,
                    "reason": report.reason})
    return out


def _count_candidates(cloud: CloudService) -> list[int] | None:
    # Instrumentation only: every merged candidate the validated merge evaluates passes through
    # the cloud's finalize hook once, so counting its calls counts candidates.
    hook = getattr(cloud, "_finalize_candidate", None)
    if hook is None:
        return None
    calls = [0]

    def counted(state):
        calls[0] += 1
        return hook(state)

    cloud._finalize_candidate = counted
    return calls


def _pretrained(cfg: PlatformConfig, reuse: tuple[PlatformConfig, CloudSnapshot] | None = None) -> CloudSnapshot:
    """The pretrained cloud of ``cfg``. ``reuse`` (a config and its pretrained snapshot) is taken
    when that config's cloud has the very same proxy data (the cloud's share does not depend on
    the device count), which saves repeating the offline stage."""
    if reuse is not None and _same_proxy_data(cfg, reuse[0]):
        return reuse[1]
    cloud = CloudService(cfg, 1)
    if cfg.offline.epochs:
        cloud.pretrain()
    return cloud.snapshot()


def _same_proxy_data(a: PlatformConfig, b: PlatformConfig) -> bool:
    ca, cb = load_dataset(a.data)[1].cloud, load_dataset(b.data)[1].cloud
    return all(torch.equal(x, y) for x, y in ((ca.train.images, cb.train.images), (ca.train.labels, cb.train.labels),
                                              (ca.val.images, cb.val.images), (ca.val.labels, cb.val.labels)))
