"""Part 1 of suite ``split``: EdgeSplit's plans against common cuts, timed by the delay model.

A modular narrow ResNet-18 on digits upsampled to 16x16, per-block costs measured from its chain
(the platform's ``measure_block_costs``), four devices with a 2x or 10x compute spread and mixed
links pooled into one bandwidth. Plans: EdgeSplit with the epoch objective (the default: the
delay model's epoch, exchange of device parts included) on the timed cost profile (the default)
and on FLOPs only, EdgeSplit with the paper's per-iteration objective, brute force on the epoch
objective, a uniform cut (after ``layer2``, as in GPSL) and the
best common cut (epoch objective), both with equal bandwidth. Every distinct plan is trained for
real through the platform's split protocol (in-process), one epoch per plan per round with the
order rotated each round, so drifting host load hits all plans alike; the delay model
(``emulated_epoch_seconds``) times every epoch from the measured compute and exact bytes.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from benchmarks.report import Table
from eclm.modules import modularize, skeleton
from eclm.pipelines.split_cloud import SplitServerSession
from eclm.pipelines.split_edge import SplitDeviceWorker
from eclm.pipelines.split_local import emulated_epoch_seconds, run_local_epochs
from eclm.pipelines.split_planning import measure_block_costs
from eclm.pipelines.split_profile import time_block_costs
from eclm.split import (
    BlockCosts,
    ComputeModel,
    LinkModel,
    SplitDevice,
    SplitPlan,
    best_common_cut_plan,
    brute_force_plan,
    plan_edgesplit,
    uniform_cut_plan,
)
from eclm.split._epoch_model import build_epoch_model
from eclm.split.config import SplitConfig
from eclm.split.factory import build_codec, build_sampler, optimizer_settings

__all__ = ["SPREADS", "run_edgesplit"]

EDGESPLIT, FLOPS, ITERATION, BRUTE, UNIFORM, COMMON = (
    "EdgeSplit (epoch objective)", "EdgeSplit (epoch objective, FLOP profile)", "EdgeSplit (iteration objective)",
    "brute force (epoch objective)", "uniform cut (after layer2)", "best common cut (epoch objective)")
SPREADS = (2, 10)
_LINKS_MBPS = (5.0, 50.0, 10.0, 25.0)
_BATCH, _LATENCY, _UNIFORM_CUT = 16, 0.005, 5


def run_edgesplit(max_epochs: int, target: float, data: dict[str, Tensor]) -> dict:
    """EdgeSplit (both objectives) vs uniform / best common cut vs brute force on two device mixes."""
    load_before = os.getloadavg()
    torch.manual_seed(0)
    model = modularize("resnet18", modules_per_layer=2, input_size=(1, 16, 16), num_classes=10,
                       channels=[16, 32, 64, 128]).eval()
    stages, example = model.chain(model.extract(model.full_spec())), torch.zeros(1, 1, 16, 16)
    flops = measure_block_costs(stages, example)
    parts = [torch.arange(len(data["y"]))[k::4] for k in range(4)]
    config = SplitConfig(global_batch=_BATCH * len(parts), sampler="fixed_equal", lr=0.05, momentum=0.9)
    # The delay model runs the server's real steps on the host and scales the devices' by host /
    # device speed; the planners get the host's speed for the server and, as the platform does with
    # split.cost_profile: timed, the stages' timed costs expressed at that speed.
    host = _host_training_speed(model, sum(flops.forward_flops), data["x"][:_BATCH])
    timed = time_block_costs(stages, example, flops, batches=(_BATCH, config.global_batch), reference_speed=host)
    steps = build_sampler(config, [len(p) for p in parts]).batch_sizes(0)
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
        runs = _measure(plans, model, data, parts, speeds, host, config, max_epochs, target)
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


def _measure(plans: dict[str, SplitPlan], model, data: dict, parts: list[Tensor], speeds: list[float],
             host: float, config: SplitConfig, max_epochs: int, target: float) -> dict[tuple, _PlanRun]:
    """Train every distinct plan ``max_epochs`` epochs, one per round, rotating the order every round."""
    runs = {}
    for plan in plans.values():
        if _key(plan) not in runs:
            runs[_key(plan)] = _PlanRun(model, plan, data, parts, speeds, host, config)
    order = list(runs.values())
    for round_ in range(max_epochs):
        for run in order[round_ % len(order):] + order[:round_ % len(order)]:
            run.epoch(target)
    return runs


class _PlanRun:
    """One plan trained for real with the platform's split protocol (in-process), timed per epoch."""

    def __init__(self, model, plan: SplitPlan, data: dict, parts: list[Tensor], speeds: list[float],
                 host: float, config: SplitConfig) -> None:
        sizes, names = [len(p) for p in parts], [f"dev{i}" for i in range(len(parts))]
        torch.manual_seed(0)
        self.sub = model.extract(model.full_spec())
        self.server = SplitServerSession(self.sub, model.chain(self.sub), model.full_spec(), names, list(plan.cuts),
                                         build_codec(config.codec), optimizer_settings(config),
                                         build_sampler(config, sizes))
        skel, self.test = skeleton(model.arch, 2, model.input_size), (data["xt"], data["yt"])
        self.workers = [SplitDeviceWorker.from_payload(n, skel, self.server.device_payload(n), config, sizes, k,
                                                       (data["x"][parts[k]], data["y"][parts[k]]), self.test)
                        for k, n in enumerate(names)]
        self.compute = {n: ComputeModel.from_speeds(s, host) for n, s in zip(names, speeds, strict=True)}
        self.links = {n: LinkModel(b, _LATENCY) for n, b in zip(names, plan.bandwidths, strict=True)}
        self.pool = sum(plan.bandwidths)
        self.delay: list[float] = []
        self.sync: list[float] = []
        self.real: list[float] = []
        self.curve: list[float] = []
        self.reached: int | None = None

    def epoch(self, target: float) -> None:
        """Train one epoch (with the epoch-end aggregation) and time it."""
        start = time.perf_counter()
        (history,) = run_local_epochs(self.server, self.workers, 1, start_epoch=len(self.curve))
        self.real.append(time.perf_counter() - start)
        times = emulated_epoch_seconds(history["device_records"], history["records"], self.compute, self.links,
                                       history["sync_bytes"], self.pool)
        self.delay.append(times["total_s"])
        self.sync.append(times["sync_s"])
        with torch.no_grad():  # after aggregation the cloud copy is the one model
            self.curve.append(float((self.sub.eval()(self.test[0]).argmax(1) == self.test[1]).float().mean()))
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
            "s / epoch (real, host)"]


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
        "Modular resnet18 (channels 16/32/64/128, 10 chain stages) on sklearn digits upsampled to 16x16 grey, "
        f"1437 train / 360 test, 4 IID devices, {_BATCH} samples per device per step (fixed-equal sampler, "
        f"{steps} steps per epoch). Devices: 10 GFLOP/s fastest, geometric spread down to 10/spread GFLOP/s; "
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
        "plan's delay-model epoch time / EdgeSplit's in the same round, median over rounds. Epochs to "
        "target: real split training with the plan's cuts through the platform's split protocol (epoch-end "
        f"aggregation), lr 0.05, momentum 0.9, seed 0, within {max_epochs} epochs (None = not reached); "
        "final test acc after all of them. Real: wall-clock "
        "seconds of the in-process emulation on a shared machine (indicative). Load average (1/5/15 min) "
        f"before {'/'.join(f'{x:.1f}' for x in load['before'])}, after "
        f"{'/'.join(f'{x:.1f}' for x in load['after'])}.")

