"""Measurements of the ``platform_overhead`` suite (real Ray for the platform side).

* :func:`ray_side`: a real ``Platform`` (local Ray, MLflow on a temporary SQLite store) runs timed
  cycles; then, per thread count, an ``EdgeActor`` and a :class:`PlainDevice` holding the same
  sub-model and data stream run ``adapt`` alternately, and the plain process measures matmul
  FLOP/s with the same threads.
* :func:`in_process_side`: the same campaign's cycles without Ray or logging (the compute the
  cycle cannot avoid), and the merge cost as the number of updates grows.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch

from benchmarks.suites._plain_worker import PlainDevice
from benchmarks.suites._platform_bench import OverheadBenchConfig, campaign_config, in_process_cycle
from eclm.config import PlatformConfig
from eclm.modules import CostTable, unpack_state
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService


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
            cycles = []
            for _ in range(config.cycles):
                platform.step()  # the drift step Platform.run takes before each cycle (not timed)
                r = platform.run_cycle()
                cycles.append({"durations": dict(r.durations), "decision": r.merge.get("decision"),
                               "bytes_up": sum(r.bytes_up.values()), "bytes_down": sum(r.bytes_down.values()),
                               "failures": dict(r.failures)})
            device = platform.names[0]
            snapshot = _get(runtime, platform.edges[device].snapshot_model.remote())
            stream = _get(runtime, platform.edges[device].stream_state.remote())
            costs = platform.info["costs"]
        finally:
            platform.shutdown()
        _, spec, _ = unpack_state(snapshot)
        flops = CostTable.from_dict(costs).total(spec)["flops"]
        throughput = []
        for threads in config.threads:
            cfg_t = cfg.model_copy(update={"name": f"overhead-t{threads}",
                                           "ray": cfg.ray.model_copy(update={"threads_per_actor": threads})})
            actor = create_edge_actor(cfg_t, 0, stream)
            try:
                with PlainDevice(cfg_t.model_dump_json(), 0, threads, stream) as plain:
                    throughput.append(_actor_vs_plain(runtime, actor, plain, spec.to_json(), snapshot, costs,
                                                      config, threads))
            finally:
                runtime.kill(actor)
        return {"cycles": cycles, "throughput": throughput, "flops_per_sample": flops}
    finally:
        if started:
            runtime.shutdown_ray()


def _actor_vs_plain(runtime, actor, plain: PlainDevice, spec_json: str, payload: bytes, costs: dict,
                    config: OverheadBenchConfig, threads: int) -> dict:
    """Alternate ``adapt`` between actor and plain process (order rotated each round); first round is warm-up."""
    _get(runtime, actor.install.remote(spec_json, payload, costs))
    plain.call("install", spec_json, payload, costs)
    actor_runs, plain_runs = [], []
    for r in range(config.repeats + 1):
        order = ("actor", "plain") if r % 2 == 0 else ("plain", "actor")
        for side in order:
            if side == "actor":
                t0 = time.perf_counter()
                metrics = _get(runtime, actor.adapt.remote())["metrics"]
                run = {"wall_seconds": time.perf_counter() - t0,
                       **{k: metrics[k] for k in ("train_seconds", "batches", "seconds_per_batch")}}
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


def _get(runtime, ref, timeout: float = 3600.0):
    results, failures = runtime.gather({"r": ref}, timeout)
    if failures:
        f = failures["r"]
        raise RuntimeError(f"actor call failed: {f.kind}: {f.message}")
    return results["r"]


def in_process_side(config: OverheadBenchConfig, workdir: Path) -> dict:
    """The Ray-free reference cycles and the merge-cost probe.

    Returns:
        ``{"cycles": [in_process_cycle results], "merge_scaling": [{"updates", "seconds", "decision",
        "accepted", "candidates"}]}``.
    """
    cfg = campaign_config(config.campaign, config.devices, workdir, name="overhead-inproc")
    cloud, services = _campaign(cfg)
    pretrained = copy.deepcopy(cloud)
    costs = cloud.info()["costs"]
    cycles = []
    for _ in range(config.cycles):
        for s in services:
            s.advance(cfg.steps_per_cycle)
        cycles.append(in_process_cycle(cloud, services, costs))
    return {"cycles": cycles, "merge_scaling": merge_scaling(config, workdir, pretrained)}


def merge_scaling(config: OverheadBenchConfig, workdir: Path, pretrained: CloudService | None = None) -> list[dict]:
    """Time ``CloudService.merge`` (platform default merge settings) for growing numbers of updates.

    All counts merge into copies of the same pretrained cloud; the updates of the first ``k``
    devices of one adaptation cycle are used, so larger counts are supersets of smaller ones.
    """
    if not config.merge_scaling:
        return []
    shape = config.campaign.model_copy(update={"accepting_merge": False})
    cfg = campaign_config(shape, max(config.merge_scaling), workdir, name="overhead-merge")
    cloud, services = _campaign(cfg, pretrained)
    costs = cloud.info()["costs"]
    selector = cloud.selector_payload()
    uploads = []
    for s in services:
        s.advance(1)
        summary = s.summary(selector)
        package = cloud.derive(s.name, summary["importance"], summary["resources"])
        s.install(package["spec"], package["payload"], costs, package["version"])
        uploads.append(s.adapt())
    out = []
    for k in config.merge_scaling:
        probe = copy.deepcopy(cloud)
        calls = _count_candidates(probe)
        t0 = time.perf_counter()
        report = probe.merge(uploads[:k])
        out.append({"updates": k, "seconds": time.perf_counter() - t0, "decision": report.get("decision"),
                    "accepted": len(report.get("accepted", [])), "candidates": calls[0] if calls else None,
                    "reason": report.get("reason", "")})
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


def _campaign(cfg: PlatformConfig, pretrained: CloudService | None = None) -> tuple[CloudService, list[EdgeService]]:
    """Cloud and devices of ``cfg``; the offline stage is reused from ``pretrained`` when it was
    trained on the very same proxy data (the cloud's share does not depend on the device count)."""
    cfg_json = cfg.model_dump_json()
    cloud = CloudService(cfg_json, 1)
    same_data = (pretrained is not None and torch.equal(pretrained.train_y, cloud.train_y)
                 and torch.equal(pretrained.train_x, cloud.train_x) and torch.equal(pretrained.val_y, cloud.val_y))
    if same_data:
        cloud.model.load_state_dict(pretrained.model.state_dict())
        cloud.best_val_acc = pretrained.best_val_acc
    elif cfg.offline.epochs:
        cloud.pretrain()
    return cloud, [EdgeService(cfg_json, i, 1) for i in range(cfg.data.num_devices)]
