"""Part 1 of suite ``split``: EdgeSplit's plans against common cuts, timed by the delay model.

The platform's modular narrow ResNet-18 on digits at 16x16, per-block costs measured from its
chain (the platform's ``measure_block_costs``), four devices with a 2x or 10x compute spread and
mixed links pooled into one bandwidth. Plans: EdgeSplit with the epoch objective (the default: the
delay model's epoch, exchange of device parts included) on the timed cost profile (the default)
and on FLOPs only, EdgeSplit with the paper's per-iteration objective, brute force on the epoch
objective, a uniform cut (after ``layer2``, as in GPSL) and the best common cut (epoch objective),
both with equal bandwidth. Every distinct plan is trained for real through the platform's split
protocol: one :func:`eclm.campaign.split_round.run_split_round` of one epoch per plan per round
over the cloud and edge services (in-process ``LocalFleet``, the plan pinned on the cloud), the
order rotated each round so drifting host load hits all plans alike; the round's delay model
(``emulated_epoch_seconds``) times every epoch from the measured compute and exact bytes.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from benchmarks.report import Table
from benchmarks.suites._split_platform import SplitFleet, data_config, platform_config, reservoir
from eclm.config import PlatformConfig
from eclm.data import load_dataset
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService
from eclm.pipelines.split_planning import measure_block_costs
from eclm.pipelines.split_profile import time_block_costs
from eclm.preflight import cloud_model
from eclm.split import (
    BlockCosts,
    SplitDevice,
    SplitPlan,
    best_common_cut_plan,
    brute_force_plan,
    plan_edgesplit,
    uniform_cut_plan,
)
from eclm.split._epoch_model import build_epoch_model
from eclm.split.factory import build_sampler

__all__ = ["SPREADS", "run_edgesplit"]

EDGESPLIT, FLOPS, ITERATION, BRUTE, UNIFORM, COMMON = (
    "EdgeSplit (epoch objective)", "EdgeSplit (epoch objective, FLOP profile)", "EdgeSplit (iteration objective)",
    "brute force (epoch objective)", "uniform cut (after layer2)", "best common cut (epoch objective)")
SPREADS = (2, 10)
_LINKS_MBPS = (5.0, 50.0, 10.0, 25.0)
_BATCH, _LATENCY, _UNIFORM_CUT = 16, 0.005, 5
# 16 samples per device per step; the plan is pinned, so the configured policy and profile go unused.
_SPLIT = {"global_batch": 4 * _BATCH, "sampler": "fixed_equal", "lr": 0.05, "momentum": 0.9, "epochs": 1,
          "cost_profile": "flops"}


def run_edgesplit(max_epochs: int, target: float, workdir: str, total: int | None = None) -> dict:
    """EdgeSplit (both objectives) vs uniform / best common cut vs brute force on two device mixes.

    Args:
        max_epochs: Epochs every plan trains.
        target: Test accuracy whose first epoch is reported.
        workdir: The platform configs' working directory.
        total: Cap on the training images the four devices share (default: the whole reservoir).
    """
    load_before = os.getloadavg()
    size, _ = reservoir(data_config(devices=1, classes=10, samples=(1, 1), seed=0))
    share = min(total or size, size) // 4
    data = data_config(devices=4, classes=10, samples=(share, share), seed=0)
    base = platform_config("edgesplit", data, _SPLIT, [{"name": f"dev{i}"} for i in range(4)], seed=0,
                           workdir=workdir)
    model = cloud_model(base, 10).eval()
    stages, example = model.chain(model.extract(model.full_spec())), torch.zeros(1, *model.input_size)
    flops = measure_block_costs(stages, example)
    config = base.split
    # The delay model runs the server's real steps on the host and scales the devices' by host /
    # device speed; the planners get the host's speed for the server and, as the platform does with
    # split.cost_profile: timed, the stages' timed costs expressed at that speed.
    host = _host_training_speed(model, sum(flops.forward_flops), _images(base)[:_BATCH])
    timed = time_block_costs(stages, example, flops, batches=(_BATCH, config.global_batch), reference_speed=host)
    steps = build_sampler(config, [share] * 4).batch_sizes(0)
    total = sum(mbps * 1e6 / 8 for mbps in _LINKS_MBPS)
    rows, raw, summary, measured = [], [], [], {}
    for spread in SPREADS:
        speeds = [10e9 * spread ** (-i / 3) for i in range(4)]
        devices = [SplitDevice(speed=s, memory=1e12, batch_size=_BATCH, latency=_LATENCY, name=f"dev{i}")
                   for i, s in enumerate(speeds)]
        plans, planning_s = _plans(timed, flops, devices, total, host, steps)
        # The FLOP-profile plan, judged by the same (timed) epoch model as the others.
        judged = build_epoch_model(timed, devices, total, host, 1.0, steps)
        plans[FLOPS] = replace(plans[FLOPS], epoch_time=judged.epoch_time(plans[FLOPS].cuts,
                                                                         plans[FLOPS].bandwidths)["total_s"])
        runs = _measure(plans, _mix_config(base, speeds), host, max_epochs, target)
        measured[spread] = (plans, runs)
        rows += _rows(spread, plans, runs, len(steps))
        raw += [{"mix": spread, "method": name, "cuts": p.cuts, "bandwidths": p.bandwidths,
                 "round_time": p.round_time, "epoch_time": p.epoch_time, "planning_s": planning_s[name],
                 **runs[_key(p)].summary()} for name, p in plans.items()]
        summary.append(_summary_line(spread, plans, runs, planning_s))
    load = {"before": load_before, "after": os.getloadavg()}
    table = Table("EdgeSplit vs uniform cut vs best common cut (4 devices, emulated)", _columns(target), rows,
                  notes=_notes(max_epochs, host, load, len(steps)))
    return {"table": table.to_dict(), "raw": raw, "summary": summary, "targets": _targets(measured),
            "load_average": load, "host_flops": host, "timed_costs": {"forward_flops": timed.forward_flops,
                                                                      "call_flops": timed.call_flops}}


def _mix_config(base: PlatformConfig, speeds: list[float]) -> PlatformConfig:
    """``base`` with the devices of one mix: compute speeds, the mixed links, the latency."""
    devices = [d.model_copy(update={"gflops": s / 1e9, "bandwidth_mbps": mbps, "latency_ms": 1e3 * _LATENCY})
               for d, s, mbps in zip(base.devices, speeds, _LINKS_MBPS, strict=True)]
    return base.model_copy(update={"devices": devices})


def _images(cfg: PlatformConfig) -> Tensor:
    return load_dataset(cfg.data)[0].images


def _plans(costs: BlockCosts, flops: BlockCosts, devices: list[SplitDevice], total: float, server: float,
           steps: np.ndarray) -> tuple[dict[str, SplitPlan], dict[str, float]]:
    """Every plan of one device mix, and the seconds each planner took."""
    makers = {
        EDGESPLIT: lambda: plan_edgesplit(costs, devices, total, server, step_batches=steps),
        FLOPS: lambda: plan_edgesplit(flops, devices, total, server, step_batches=steps),
        ITERATION: lambda: plan_edgesplit(costs, devices, total, server, objective="iteration",
                                          step_batches=steps),
        BRUTE: lambda: brute_force_plan(costs, devices, total, server, step_batches=steps),
        UNIFORM: lambda: uniform_cut_plan(costs, devices, total, server, _UNIFORM_CUT, step_batches=steps),
        COMMON: lambda: best_common_cut_plan(costs, devices, total, server, step_batches=steps),
    }
    plans, seconds = {}, {}
    for name, make in makers.items():
        start = time.perf_counter()
        plans[name] = make()
        seconds[name] = time.perf_counter() - start
    return plans, seconds


def _key(plan: SplitPlan) -> tuple:
    return plan.cuts, tuple(round(b) for b in plan.bandwidths)


def _measure(plans: dict[str, SplitPlan], cfg: PlatformConfig, host: float, max_epochs: int,
             target: float) -> dict[tuple, _PlanRun]:
    """Train every distinct plan ``max_epochs`` epochs, one per round, rotating the order every round."""
    runs = {}
    for plan in plans.values():
        if _key(plan) not in runs:
            runs[_key(plan)] = _PlanRun(cfg, plan, host)
    order = list(runs.values())
    for round_ in range(max_epochs):
        for run in order[round_ % len(order):] + order[:round_ % len(order)]:
            run.epoch(target)
    return runs


class _PinnedCloud(CloudService):
    """The platform's cloud service with the suite's plan pinned (its planners ran beforehand)."""

    def __init__(self, config: PlatformConfig, *, plan: SplitPlan) -> None:
        super().__init__(config)
        self.plan = plan

    def plan_split_cuts(self, *args, **kwargs) -> SplitPlan:
        return self.plan


class _EmulatedDevice(EdgeService):
    """The platform's edge service reporting the host's achieved training speed as its host speed.

    The platform scales a device's measured compute by (host matmul speed / configured device speed);
    the planners above assumed the host's achieved training speed, so the delay model must use it.
    """

    def __init__(self, config: PlatformConfig, index: int, *, host_gflops: float, **kwargs) -> None:
        super().__init__(config, index, **kwargs)
        self.host_gflops = host_gflops

    def split_hello(self) -> dict:
        return dict(super().split_hello(), host_gflops=self.host_gflops)


class _PlanRun:
    """One plan trained for real through the platform's split protocol, one split round per epoch.

    Each epoch is :func:`eclm.campaign.split_round.run_split_round` of one epoch over the cloud and
    edge services (in-process :class:`~eclm.campaign.local.LocalFleet`); the round's aggregated model
    becomes the cloud model the next round starts from.
    """

    def __init__(self, cfg: PlatformConfig, plan: SplitPlan, host: float) -> None:
        self.fleet = SplitFleet(cfg, cloud_factory=functools.partial(_PinnedCloud, plan=plan),
                                device_factory=functools.partial(_EmulatedDevice, host_gflops=host / 1e9))
        self.plan = plan
        self.delay: list[float] = []
        self.sync: list[float] = []
        self.real: list[float] = []
        self.curve: list[float] = []
        self.reached: int | None = None

    def epoch(self, target: float) -> None:
        """Train one epoch (one split round with its epoch-end aggregation) and time it."""
        result = self.fleet.round(1)
        if tuple(result.report["plan"]["cuts"]) != self.plan.cuts:
            raise RuntimeError(f"the round trained cuts {result.report['plan']['cuts']}, not {self.plan.cuts}")
        self.fleet.adopt(result)
        (epoch,) = result.report["epochs"]
        self.real.append(result.round_metrics["split/real_seconds"])
        self.delay.append(epoch["emulated"]["total_s"])
        self.sync.append(epoch["emulated"]["sync_s"])
        # After aggregation every device part is the cloud copy's prefix: one model, tested by split
        # inference on every device's held-out set (the same images: every device holds every class).
        self.curve.append(statistics.mean(m.acc_after for m in result.metrics.values()))
        if self.reached is None and self.curve[-1] >= target:
            self.reached = len(self.curve)

    def summary(self) -> dict:
        return {"epochs_to_target": self.reached, "curve": self.curve, "final_acc": self.curve[-1],
                "delay_epochs_s": self.delay, "delay_epoch_s": statistics.mean(self.delay),
                "delay_epoch_std": _std(self.delay), "delay_sync_s": statistics.mean(self.sync),
                "real_epoch_s": statistics.mean(self.real)}


def _paired_ratio(num: _PlanRun, den: _PlanRun) -> tuple[float, float | None]:
    """Median and std over rounds of ``num / den`` delay-model epoch times (the two epochs of a round).

    The median, because a load spike from other work on the host can hit one epoch of one plan.
    """
    ratios = [a / b for a, b in zip(num.delay, den.delay, strict=True)]
    return statistics.median(ratios), (statistics.stdev(ratios) if len(ratios) > 1 else None)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _columns(target: float) -> list[str]:
    return ["device mix", "plan", "cuts", "s / epoch (iteration model)", "s / epoch (epoch model)",
            "gap to brute force (epoch model)", "s / epoch (delay model)", "std", "x EdgeSplit (delay model)",
            f"epochs to {target:.0%}", f"s to {target:.0%} (delay model)", "final test acc",
            "s / round of 1 epoch (real, host)"]


def _rows(spread: int, plans: dict[str, SplitPlan], runs: dict, steps: int) -> list[list]:
    ref, brute = runs[_key(plans[EDGESPLIT])], plans[BRUTE]
    rows = []
    for name, plan in plans.items():
        run = runs[_key(plan)].summary()
        to_target = None if run["epochs_to_target"] is None else run["epochs_to_target"] * run["delay_epoch_s"]
        iteration_s = None if name == FLOPS else plan.round_time * steps  # FLOP row: another cost model
        rows.append([f"{spread}x compute", name, "/".join(map(str, plan.cuts)), iteration_s,
                     plan.epoch_time, plan.epoch_time / brute.epoch_time - 1, run["delay_epoch_s"],
                     run["delay_epoch_std"], _paired_ratio(runs[_key(plan)], ref)[0], run["epochs_to_target"],
                     to_target, run["final_acc"], run["real_epoch_s"]])
    return rows


def _summary_line(spread: int, plans: dict[str, SplitPlan], runs: dict, planning_s: dict[str, float]) -> str:
    edge, iteration = runs[_key(plans[EDGESPLIT])], runs[_key(plans[ITERATION])]
    uni, com = runs[_key(plans[UNIFORM])], runs[_key(plans[COMMON])]
    gap = plans[EDGESPLIT].epoch_time / plans[BRUTE].epoch_time - 1
    return (
        f"EdgeSplit with the epoch objective, {spread}x compute spread: cuts "
        f"{'/'.join(map(str, plans[EDGESPLIT].cuts))}, {edge.summary()['delay_epoch_s']:.2f} s/epoch in the delay "
        f"model vs uniform cut {uni.summary()['delay_epoch_s']:.2f} ({_paired_ratio(uni, edge)[0]:.2f}x) and best "
        f"common cut {com.summary()['delay_epoch_s']:.2f} ({_paired_ratio(com, edge)[0]:.2f}x); the paper's "
        f"per-iteration objective (cuts {'/'.join(map(str, plans[ITERATION].cuts))}) takes "
        f"{iteration.summary()['delay_epoch_s']:.2f} ({_paired_ratio(iteration, edge)[0]:.2f}x, "
        f"{iteration.summary()['delay_sync_s']:.2f} s of it exchanging device parts). Planned epoch "
        f"{plans[EDGESPLIT].epoch_time:.2f} s, {gap:.2%} above brute force on the same model (planner "
        f"{planning_s[EDGESPLIT]:.1f} s, brute force {planning_s[BRUTE]:.1f} s).")


def _targets(measured: dict[int, tuple[dict, dict]]) -> list[dict]:
    """The issue's four targets: delay-model speedups (paired per round) and the gap to brute force."""
    def speedup(spread: int, baseline: str) -> tuple[float, float | None]:
        plans, runs = measured[spread]
        return _paired_ratio(runs[_key(plans[baseline])], runs[_key(plans[EDGESPLIT])])

    records = []
    for name, spread, baseline in (("edgesplit_speedup_vs_uniform_delay_2x", 2, UNIFORM),
                                   ("edgesplit_speedup_vs_uniform_delay_10x", 10, UNIFORM),
                                   ("edgesplit_speedup_vs_best_common_delay_10x", 10, COMMON)):
        value, spread_ = speedup(spread, baseline)
        records.append({"name": f"split.{name}", "value": value, "op": ">=", "target": 1.05, "spread": spread_})
    gap = max(p[EDGESPLIT].epoch_time / p[BRUTE].epoch_time - 1 for p, _ in measured.values())
    records.append({"name": "split.edgesplit_gap_to_bruteforce", "value": gap, "op": "<=", "target": 0.05,
                    "spread": None})
    return records


def _host_training_speed(model, flops_per_sample: float, batch: Tensor, repeats: int = 5) -> float:
    """Achieved training FLOP/s of this model on the host (forward + backward, median of runs).

    Small convolutions reach a fraction of matmul peak, so device speeds in the time model's FLOP/s
    are scaled against what the host really achieves on this workload.
    """
    sub = model.extract(model.full_spec()).train()
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        sub(batch).sum().backward()
        seconds.append(time.perf_counter() - start)
    return 3 * flops_per_sample * len(batch) / statistics.median(seconds[1:])


def _notes(max_epochs: int, host: float, load: dict, steps: int) -> str:
    return (
        "The platform's modular resnet18 (channels 16/32/64/128, 10 chain stages) on sklearn digits at 16x16 "
        "grey; the platform's partition: 4 devices holding every class, each drawing a quarter of the training "
        "reservoir's size from it (about 355 images; local sets overlap), test = the held-out 20% (about 356 "
        f"images); {_BATCH} samples per device per step (fixed-equal sampler, {steps} steps per epoch). Devices: 10 GFLOP/s fastest, geometric spread down to 10/spread GFLOP/s; "
        f"links {'/'.join(f'{m:g}' for m in _LINKS_MBPS)} Mbit/s pooled (EdgeSplit re-divides the pool, the "
        f"baselines split it equally), {_LATENCY * 1e3:g} ms latency. Host = achieved training speed of this "
        f"model at batch {_BATCH} ({host / 1e9:.2f} GFLOP/s here): the delay model scales the devices' real "
        "seconds by host / device speed and runs the server at host speed, so every planner is given the "
        "host's speed for the server, as the platform gives its planner the cloud's measured speed. Costs: "
        "activation and device-part bytes measured on the chain; compute from the stages' training passes "
        f"timed at batches {_BATCH} and 64 (fixed cost per call + cost per sample, at host speed; the "
        "platform's split.cost_profile: timed), or FLOPs only for the 'FLOP profile' row. Iteration model: "
        "the EdgeSplit paper's per-iteration straggler time x steps (no exchange). Epoch model: the delay "
        "model's formula (eclm.split.epoch_seconds) on the planner's predictions: every step's "
        "forward and backward phase, latency per message, server time summed over cut groups, the epoch-end "
        "exchange of device parts over the pool. Delay model: the same formula on the measured steps: real "
        "host compute x (host / device FLOP/s) + latency + exact bytes / share per message, the exchange "
        f"with the real payload sizes; mean and std over the epochs. Every plan trains {max_epochs} epochs, "
        "one per round in rotating order, so drifting host load hits all plans alike; x EdgeSplit: the "
        "plan's delay-model epoch time / EdgeSplit's in the same round, median over rounds. Training: each "
        "epoch is one platform split round (run_split_round over the cloud and edge services, in-process "
        "LocalFleet; the plan pinned on the cloud, the devices reporting the host's achieved speed so the "
        "round's delay model scales as above), epoch-end aggregation, lr 0.05, momentum 0.9, seed 0; the "
        "round's aggregated model is the next round's start (optimiser state and the sampler's epoch restart "
        "every round, as in the platform's rounds). Epochs to target: split inference on the held-out set "
        f"after each round, within {max_epochs} epochs (None = not reached); final test acc after all of them. "
        "Real: wall-clock seconds of a whole one-epoch round in process (hello, prepare, evaluation before and "
        "after included) on a shared machine (indicative). Load average (1/5/15 min) "
        f"before {'/'.join(f'{x:.1f}' for x in load['before'])}, after "
        f"{'/'.join(f'{x:.1f}' for x in load['after'])}.")

