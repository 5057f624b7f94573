"""Planning a split round: the split spec, measured block costs, cuts, and the server session.

:func:`prepare_split_round` derives the split spec (pooled importance; only the devices'
``params_fraction`` limits it, because memory is what the cut takes care of), measures per-block
costs of its chain (:func:`measure_block_costs`, and with ``split.cost_profile: timed`` the stages'
timed fixed and per-sample costs, :func:`~eclm.pipelines.split_profile.time_block_costs`), plans a cut and a bandwidth share per device with
the configured policy (EdgeSplit, best common cut or a fixed cut), and opens a
:class:`~eclm.pipelines.split_cloud.SplitServerSession`. :func:`local_training_fits` is the
``auto`` mode's choice between local adaptation and split learning. Pure torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from eclm.modules import (
    BudgetTooSmallError,
    DeviceProfile,
    ModularModel,
    SubModelSpec,
    derive_submodel,
)
from eclm.modules.costs import measure
from eclm.modules.trainable import ACTIVATION_FACTOR
from eclm.pipelines.profiler import budget_from_resources
from eclm.pipelines.split_cloud import SplitServerSession
from eclm.pipelines.split_edge import (
    Stages,
)
from eclm.pipelines.split_profile import time_block_costs
from eclm.split import BlockCosts, SplitDevice, SplitPlan
from eclm.split.config import SplitConfig
from eclm.split.factory import build_codec, build_sampler, optimizer_settings, plan_cuts

__all__ = [
    "DEFAULT_BANDWIDTH_MBPS",
    "local_training_fits",
    "measure_block_costs",
    "prepare_split_round",
    "split_spec",
]

#: Link assumed for a device whose config gives no ``bandwidth_mbps`` (Mbit/s).
DEFAULT_BANDWIDTH_MBPS = 100.0
# Training state per parameter (fp32 weights, gradients, momentum); activations count
# ``ACTIVATION_FACTOR`` times: the model of ``adaptation.training_memory_bytes``.
_STATE_BYTES_PER_PARAM = 12.0
_UNBOUNDED_MEMORY = 1e30


def measure_block_costs(stages: Stages, example: Tensor) -> BlockCosts:
    """Per-stage costs of a chain, measured by running ``example`` through it.

    Args:
        stages: ``ModularModel.chain(sub)``; ``L`` stages.
        example: ``(1, C, H, W)`` input (costs are per sample).

    Returns:
        :class:`BlockCosts`: measured forward FLOPs per stage, bytes of the tensor at every
        boundary, 12 bytes of training state per parameter, 2x the stored activations, and the
        bytes of each stage's tensors (weights and buffers) that an epoch-end exchange sends.

    Raises:
        ValueError: If ``example`` does not have batch size 1.
    """
    if example.shape[0] != 1:
        raise ValueError(f"example must have batch size 1, got shape {tuple(example.shape)}")
    flops, state, acts, sent = [], [], [], []
    boundary = [float(example.numel() * example.element_size())]
    x = example
    for _, stage in stages:
        params, stage_flops, act_bytes, _ = measure(stage, x)
        flops.append(stage_flops)
        state.append(_STATE_BYTES_PER_PARAM * params)
        acts.append(ACTIVATION_FACTOR * act_bytes)
        sent.append(float(sum(t.numel() * t.element_size() for t in stage.state_dict().values())))
        was = stage.training
        with torch.no_grad():
            x = stage.eval()(x)
        stage.train(was)
        boundary.append(float(x.numel() * x.element_size()))
    return BlockCosts(forward_flops=flops, activation_bytes=boundary, param_bytes=state,
                      train_activation_bytes=acts, state_bytes=sent)


def local_training_fits(model: ModularModel, device: str, importance: Sequence[Sequence[float]],
                        resources: dict, *, batch_size: int, target_step_seconds: float,
                        max_transfer_seconds: float) -> tuple[bool, str]:
    """The ``auto`` mode decision: can the device train a derived sub-model locally?

    Local training does not fit when derivation fails for the device's budget but succeeds once
    its memory limit is lifted (memory is the binding resource). A budget that fails for other
    reasons stays local, where derivation reports the error as usual.

    Returns:
        ``(fits, reason)``.
    """
    full_params = model.costs().total(model.full_spec())["params"]

    def budget(res: dict) -> DeviceProfile:
        return budget_from_resources(device, res, full_params=full_params, batch_size=batch_size,
                                     target_step_seconds=target_step_seconds,
                                     max_transfer_seconds=max_transfer_seconds)

    try:
        derive_submodel(model, importance, budget(resources))
        return True, "a derived sub-model fits the device's budget"
    except BudgetTooSmallError as err:
        try:
            derive_submodel(model, importance, budget(dict(resources, memory_mb=None)))
        except BudgetTooSmallError:
            return True, f"budget too small for reasons other than memory: {err}"
        return False, f"local training does not fit the memory: {err}"


def split_spec(model: ModularModel, importances: Sequence[Sequence[Sequence[float]]],
               resources: Sequence[dict]) -> SubModelSpec:
    """The one sub-model a split round trains: pooled importance, tightest ``params_fraction``.

    Raises:
        ValueError: If ``importances`` is empty.
    """
    if not importances:
        raise ValueError("split_spec needs at least one device's importance")
    pooled = [np.mean([imp[i] for imp in importances], axis=0).tolist() for i in range(len(importances[0]))]
    fractions = [float(r["params_fraction"]) for r in resources if r.get("params_fraction")]
    full_params = model.costs().total(model.full_spec())["params"]
    limit = {"max_params": min(fractions) * full_params} if fractions else {}
    return derive_submodel(model, pooled, DeviceProfile(name="split", **limit))


def prepare_split_round(model: ModularModel, config: SplitConfig, devices: Sequence[dict], *,
                        server_gflops: float, allowed_classes: Sequence[int] | None = None,
                        planner: Callable[..., SplitPlan] = plan_cuts) -> tuple[SplitServerSession, dict]:
    """Derive the split spec, measure block costs, plan cuts and open the server session.

    Args:
        model: The cloud's modular model.
        config: Split settings.
        devices: Per device ``{"name", "importance", "resources", "num_samples", "host_gflops"}``;
            ``resources`` may give ``memory_mb``, ``gflops``, ``bandwidth_mbps``, ``latency_s``
            and ``params_fraction``.
        server_gflops: Server compute speed (GFLOP/s) for the planner.
        allowed_classes: Loss restricted to these classes, or ``None``.
        planner: Plans cuts and shares, called like :func:`~eclm.split.plan_cuts` (the default: the
            configured policy) with the devices that take part, in client order.

    Returns:
        ``(session, info)``; ``info`` holds the spec, stage names, costs, the plan (with
        ``round_time`` of the per-iteration model and ``epoch_time`` of the epoch model), per device
        ``{"cut", "index", "bandwidth" (bytes/s), "slowdown", "latency", "memory" (bytes)}``, and ``excluded``
        (devices no cut fits, with the reason).

    Raises:
        ValueError: If no device can take part, or the planner fails.
    """
    spec = split_spec(model, [d["importance"] for d in devices], [d["resources"] for d in devices])
    sub = model.extract(spec)
    stages = model.chain(sub)
    costs = measure_block_costs(stages, torch.zeros(1, *model.input_size))
    excluded = {}
    first_batches = _local_batches(config, [int(d["num_samples"]) for d in devices])
    for d, batch in zip(devices, first_batches, strict=True):
        need, memory = costs.device_memory(1, batch), _memory_bytes(d["resources"])
        if d["num_samples"] < 1:
            excluded[d["name"]] = "no local training samples"
        elif need > memory:
            excluded[d["name"]] = (f"no cut fits: stage 1 needs {need:.4g} bytes at batch {batch}, "
                                   f"the device has {memory:.4g}")
    kept = [d for d in devices if d["name"] not in excluded]
    if not kept:
        raise ValueError(f"no device can take part in split learning: {excluded}")
    sizes = [int(d["num_samples"]) for d in kept]
    batches = _local_batches(config, sizes)
    if config.cost_profile == "timed":  # the devices' batches up to the server's global batch
        small = min(batches)
        costs = time_block_costs(stages, torch.zeros(1, *model.input_size), costs, reference_speed=1e9 * server_gflops,
                                 batches=(small, max(config.global_batch, 2 * small)))
    planned = [SplitDevice(speed=1e9 * _gflops(d), memory=_memory_bytes(d["resources"]), batch_size=b,
                           latency=float(d["resources"].get("latency_s") or 0.0), name=d["name"])
               for d, b in zip(kept, batches, strict=True)]
    total_bandwidth = sum(_bandwidth_bytes(d["resources"]) for d in kept)
    plan = planner(config, costs, planned, total_bandwidth, 1e9 * server_gflops, client_sizes=sizes)
    session = SplitServerSession(sub, stages, spec, [d["name"] for d in kept], list(plan.cuts),
                                 build_codec(config.codec), optimizer_settings(config),
                                 build_sampler(config, sizes), allowed_classes=allowed_classes)
    plan_info = {"local_batches": batches, "total_bandwidth": total_bandwidth, "server_gflops": server_gflops}
    return session, _round_info(spec, session, sizes, excluded, costs, config.cost_profile, plan, plan_info,
                                kept, planned)


def _round_info(spec: SubModelSpec, session: SplitServerSession, sizes: list[int], excluded: dict,
                costs: BlockCosts, profile: str, plan: SplitPlan, plan_info: dict, kept: Sequence[dict],
                planned: Sequence[SplitDevice]) -> dict:
    """The ``info`` of :func:`prepare_split_round` (reported with the round)."""
    return {
        "spec": spec.to_json(), "stages": session.stage_names, "client_sizes": sizes, "excluded": excluded,
        "costs": {"profile": profile, "forward_flops": costs.forward_flops, "call_flops": costs.call_flops,
                  "activation_bytes": costs.activation_bytes, "param_bytes": costs.param_bytes,
                  "state_bytes": costs.state_bytes},
        "plan": {"method": plan.method, "cuts": list(plan.cuts), "bandwidths": list(plan.bandwidths),
                 "device_times": list(plan.device_times), "round_time": plan.round_time,
                 "epoch_time": plan.epoch_time, "objective": plan.objective, "iterations": plan.iterations,
                 **plan_info},
        "devices": {d["name"]: {"cut": plan.cuts[k], "index": k, "bandwidth": plan.bandwidths[k],
                                "slowdown": float(d["host_gflops"]) / _gflops(d), "latency": planned[k].latency,
                                "memory": costs.device_memory(plan.cuts[k], planned[k].batch_size)}
                    for k, d in enumerate(kept)},
    }


def _local_batches(config: SplitConfig, sizes: Sequence[int]) -> list[int]:
    """Largest local batch each client gets in epoch 0 (what its memory must hold)."""
    if sum(sizes) < 1:
        raise ValueError("no split device holds local training samples")
    return [max(1, int(v)) for v in build_sampler(config, sizes).batch_sizes(0).max(axis=0)]


def _gflops(device: dict) -> float:
    return float(device["resources"].get("gflops") or device["host_gflops"])


def _memory_bytes(resources: dict) -> float:
    mem = resources.get("memory_mb")
    return float(mem) * 2**20 if mem else _UNBOUNDED_MEMORY


def _bandwidth_bytes(resources: dict) -> float:
    return float(resources.get("bandwidth_mbps") or DEFAULT_BANDWIDTH_MBPS) * 1e6 / 8
