"""The cloud side of parallel split learning: one server model for many device parts.

A split round (see ``docs/split_learning.md``) trains *one* sub-model with several devices:

1. :func:`prepare_split_round` derives the split spec (pooled importance; only the devices'
   ``params_fraction`` limits it, because memory is what the cut takes care of), measures per-block
   costs of its chain (:func:`measure_block_costs`), plans a cut and a bandwidth share per device
   with the configured policy (EdgeSplit, best common cut or a fixed cut), and opens a
   :class:`SplitServerSession`.
2. Every global step the session receives the active devices' smashed activations (codec
   payloads), runs stages ``[cut, L)`` per cut group on the concatenation, computes *one* mean
   cross-entropy over the global batch, steps the server optimiser once, and returns each device
   the gradient of the loss with respect to the activation it sent.
3. At the end of every epoch :meth:`SplitServerSession.aggregate` averages every chain stage over
   all copies that trained it (device parts of deeper-cut devices, and the server's copy for
   shallower-cut devices), weighted by the samples that passed through each copy, and sends the
   devices their new prefixes: after each round there is one model.

:func:`run_local_epochs` drives the same objects in-process; ``eclm.runtime.split_round`` drives
them across Ray actors with the same call sequence. Pure torch, no Ray.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from eclm.modules import (
    BudgetTooSmallError,
    DeviceProfile,
    ModularModel,
    SubModelSpec,
    derive_submodel,
    pack_state,
    unpack_state,
)
from eclm.modules.costs import measure
from eclm.pipelines.profiler import budget_from_resources
from eclm.pipelines.split_edge import (
    SplitDeviceWorker,
    Stages,
    cut_chain,
    pack_gradient,
    segment_state,
    unpack_smashed,
)
from eclm.split import BlockCosts, ComputeModel, LinkModel, LocalBatchSampler, OptimizerSettings, SplitDevice
from eclm.split.codecs.base import SmashedCodec
from eclm.split.config import SplitConfig
from eclm.split.factory import build_codec, build_sampler, optimizer_settings, plan_cuts
from eclm.split.norms import batch_safe_norms

__all__ = [
    "DEFAULT_BANDWIDTH_MBPS",
    "SplitServerSession",
    "emulated_epoch_seconds",
    "local_training_fits",
    "measure_block_costs",
    "prepare_split_round",
    "run_local_epochs",
    "split_spec",
]

#: Link assumed for a device whose config gives no ``bandwidth_mbps`` (Mbit/s).
DEFAULT_BANDWIDTH_MBPS = 100.0
# Training state per parameter (fp32 weights, gradients, momentum) and stored activation copies
# (activations and their gradients): the model of ``adaptation.training_memory_bytes``.
_STATE_BYTES_PER_PARAM = 12.0
_ACTIVATION_COPIES = 2.0
_UNBOUNDED_MEMORY = 1e30


def measure_block_costs(stages: Stages, example: Tensor) -> BlockCosts:
    """Per-stage costs of a chain, measured by running ``example`` through it.

    Args:
        stages: ``ModularModel.chain(sub)``; ``L`` stages.
        example: ``(1, C, H, W)`` input (costs are per sample).

    Returns:
        :class:`BlockCosts`: measured forward FLOPs per stage, bytes of the tensor at every
        boundary, 12 bytes of training state per parameter and 2x the stored activations.

    Raises:
        ValueError: If ``example`` does not have batch size 1.
    """
    if example.shape[0] != 1:
        raise ValueError(f"example must have batch size 1, got shape {tuple(example.shape)}")
    flops, state, acts, boundary = [], [], [], [float(example.numel() * example.element_size())]
    x = example
    for _, stage in stages:
        params, stage_flops, act_bytes, _ = measure(stage, x)
        flops.append(stage_flops)
        state.append(_STATE_BYTES_PER_PARAM * params)
        acts.append(_ACTIVATION_COPIES * act_bytes)
        was = stage.training
        with torch.no_grad():
            x = stage.eval()(x)
        stage.train(was)
        boundary.append(float(x.numel() * x.element_size()))
    return BlockCosts(forward_flops=flops, activation_bytes=boundary, param_bytes=state,
                      train_activation_bytes=acts)


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


class SplitServerSession:
    """The server's side of one split round: stages ``[cut, L)`` of one sub-model for every cut.

    Args:
        sub: The sub-model (a private copy: the cloud model changes only at merge).
        stages: ``chain(sub)``.
        spec: Its spec.
        devices: Device names in client (sampler column) order.
        cuts: Cut of each device.
        codec: Activation codec (the devices use the same).
        optimizer: SGD settings.
        sampler: The local batch sampler (the devices hold identical copies).
        allowed_classes: If given, the loss's softmax is restricted to these classes (as local
            adaptation restricts it to a device's classes).

    Raises:
        ValueError: On mismatched lengths, duplicate names or a cut outside ``1..L``.
    """

    def __init__(self, sub: nn.Module, stages: Stages, spec: SubModelSpec, devices: Sequence[str],
                 cuts: Sequence[int], codec: SmashedCodec, optimizer: OptimizerSettings,
                 sampler: LocalBatchSampler, *, allowed_classes: Sequence[int] | None = None) -> None:
        n = len(devices)
        if len(cuts) != n or sampler.num_clients != n or len(set(devices)) != n:
            raise ValueError(f"need unique devices with one cut each matching {sampler.num_clients} sampler "
                             f"clients; got devices {list(devices)} and cuts {list(cuts)}")
        self.sub, self.spec, self.devices, self.cuts = sub, spec, list(devices), [int(c) for c in cuts]
        self.codec, self.sampler = codec, sampler
        self.index = {name: k for k, name in enumerate(self.devices)}
        self.stage_names = [name for name, _ in stages]
        self.stage_keys = [list(segment_state(sub, stage)) for _, stage in stages]
        self.groups: dict[int, list[int]] = {}
        for k, c in enumerate(self.cuts):
            self.groups.setdefault(c, []).append(k)
        self.server_parts = {c: cut_chain(stages, c)[1] for c in self.groups}
        # Stages shared by several cut groups are updated once per step (dedupe by identity).
        unique = {id(p): p for part in self.server_parts.values() for p in part.parameters()}
        self.optimizer = optimizer.build(list(unique.values())) if unique else None
        self.allowed = None if allowed_classes is None else sorted({int(c) for c in allowed_classes})
        self.samples = [0] * len(self.devices)
        self.records: list[dict] = []
        self.stats = {"loss_sum": 0.0, "correct": 0, "samples": 0}
        self._plan: tuple[int, np.ndarray] | None = None

    def _device(self, name: object) -> int:
        if name not in self.index:
            raise ValueError(f"device {name!r} is not part of this split round ({self.devices})")
        return self.index[name]

    def prefix_state(self, device: str) -> dict[str, Tensor]:
        """The tensors of ``device``'s part (stages ``[0, cut)``) keyed by sub-model names."""
        state = self.sub.state_dict()
        return {k: state[k] for keys in self.stage_keys[: self.cuts[self._device(device)]] for k in keys}

    def device_payload(self, device: str, **meta: object) -> bytes:
        """The device part of ``device`` as safetensors with the spec and its cut."""
        meta = {"cut": self.cuts[self.index[device]], **meta}
        return pack_state(self.prefix_state(device), self.spec, meta)

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """Local batch sizes ``b[t, k]`` of ``epoch`` (counts only, as GPSL's server announces)."""
        return self._batch_sizes(epoch).tolist()

    def _batch_sizes(self, epoch: int) -> np.ndarray:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.sampler.batch_sizes(epoch))
        return self._plan[1]

    def _masked(self, logits: Tensor) -> Tensor:
        if self.allowed is None:
            return logits
        mask = torch.full((logits.shape[-1],), float("-inf"))
        mask[torch.tensor(self.allowed)] = 0.0
        return logits + mask

    def server_step(self, epoch: int, step: int, messages: Sequence[bytes]) -> list[bytes]:
        """One global step on the smashed activations of the step's active devices.

        Args:
            epoch: Sampler epoch.
            step: Step within the epoch.
            messages: :func:`~eclm.pipelines.split_edge.pack_smashed` messages, one per active device.

        Returns:
            One gradient message per input message, in the same order.

        Raises:
            ValueError: If a message comes from an unknown device, twice, for another step, or
                with a batch size other than the plan's.
        """
        start = time.perf_counter()
        plan = self._batch_sizes(epoch)
        if not 0 <= step < len(plan):
            raise ValueError(f"step {step} does not fit step {(epoch, step)}: epoch has {len(plan)} steps")
        received: dict[int, tuple[Tensor, Tensor]] = {}
        for data in messages:
            encoded, labels, meta = unpack_smashed(data)
            k = self._device(meta.get("device"))
            at = (meta.get("epoch"), meta.get("step"))
            if at != (epoch, step) or len(labels) != int(plan[step][k]) or k in received:
                raise ValueError(f"message of {self.devices[k]!r} for step {at} with {len(labels)} samples "
                                 f"does not fit step {(epoch, step)} (plan: {int(plan[step][k])} samples)")
            # The server's copy starts a new graph: this is the network boundary.
            received[k] = (self.codec.decode(encoded).requires_grad_(True), labels)
        logits, labels = [], []
        for c, members in self.groups.items():  # laid out group by group, members in client order
            present = [k for k in members if k in received]
            if present:
                part = self.server_parts[c].train()  # normalisation layers use batch statistics
                group_batch = torch.cat([received[k][0] for k in present])
                with batch_safe_norms(part, int(group_batch.shape[0])):  # ... unless it is one sample
                    logits.append(part(group_batch))
                labels.extend(received[k][1] for k in present)
        all_logits, all_labels = torch.cat(logits), torch.cat(labels)
        loss = F.cross_entropy(self._masked(all_logits), all_labels)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        # ``received`` keeps message order, so the gradients line up with ``messages``.
        out = [pack_gradient(x_hat.grad, device=self.devices[k], epoch=epoch, step=step)
               for k, (x_hat, _) in received.items()]
        for k, (_, y) in received.items():
            self.samples[k] += len(y)
        n = all_labels.numel()
        self.stats["loss_sum"] += float(loss.detach()) * n
        self.stats["correct"] += int((all_logits.argmax(dim=1) == all_labels).sum())
        self.stats["samples"] += n
        seconds = time.perf_counter() - start
        self.records.append({"epoch": epoch, "step": step, "server_s": seconds, "samples": n})
        return out

    @torch.no_grad()
    def aggregate(self, device_states: Mapping[str, bytes]) -> dict[str, bytes]:
        """Average every stage over the copies that trained it this epoch; one model results.

        A stage below device ``k``'s cut was trained by ``k`` on its samples; a stage at or above
        the cut was trained by the server on ``k``'s samples. The weights are those sample counts;
        a stage nobody trained keeps its value; integer buffers take the first copy's.

        Args:
            device_states: Every device's :meth:`SplitDeviceWorker.state_payload`.

        Returns:
            Per device its new device-part payload; ``meta["averaged"]`` tells it to restart its
            optimiser (FedAvg's convention) because some of its stages were averaged.

        Raises:
            ValueError: If a device is missing or its tensors are not exactly its device part.
        """
        if set(device_states) != set(self.devices):
            raise ValueError(f"aggregate needs the states of {sorted(self.devices)}, "
                             f"got {sorted(device_states)}")
        states = {}
        for name, data in device_states.items():
            state, _, _ = unpack_state(data)
            if set(state) != set(self.prefix_state(name)):
                raise ValueError(f"state of {name!r} does not hold exactly its device part")
            states[self.index[name]] = state
        own, clients = self.sub.state_dict(), range(len(self.devices))
        averaged = set()
        for j, keys in enumerate(self.stage_keys):
            copies = [(states[k], self.samples[k]) for k in clients
                      if self.cuts[k] > j and self.samples[k] > 0]
            server_weight = sum(self.samples[k] for k in clients if self.cuts[k] <= j)
            if server_weight > 0:
                copies.append((own, server_weight))
            if not copies:
                continue
            if len(copies) > 1:
                averaged.add(j)
            weight = torch.tensor([w for _, w in copies], dtype=torch.float64)
            weight /= weight.sum()
            for key in keys:
                ref = own[key]
                if ref.is_floating_point():
                    stacked = torch.stack([s[key].to(torch.float64) for s, _ in copies])
                    ref.copy_((weight.view(-1, *[1] * ref.dim()) * stacked).sum(dim=0).to(ref.dtype))
                else:
                    ref.copy_(copies[0][0][key])
        self.samples = [0] * len(self.devices)
        return {name: self.device_payload(name, averaged=bool(averaged & set(range(self.cuts[k]))))
                for k, name in enumerate(self.devices)}

    @torch.no_grad()
    def evaluate(self, message: bytes) -> dict:
        """Loss and accuracy of the composed model on a device's encoded test activations."""
        encoded, labels, meta = unpack_smashed(message)
        part = self.server_parts[self.cuts[self._device(meta.get("device"))]]
        was = part.training
        logits = part.eval()(self.codec.decode(encoded))
        part.train(was)
        return {"device": meta["device"], "loss": float(F.cross_entropy(logits, labels)),
                "accuracy": float((logits.argmax(dim=1) == labels).float().mean()), "samples": len(labels),
                "bits": encoded.size_bits}

    def epoch_summary(self) -> dict:
        """Mean training loss/accuracy and server step records since the last call (then reset)."""
        s, n = self.stats, max(1, self.stats["samples"])
        out = {"loss": s["loss_sum"] / n, "accuracy": s["correct"] / n, "samples": s["samples"],
               "records": self.records}
        self.stats, self.records = {"loss_sum": 0.0, "correct": 0, "samples": 0}, []
        return out


def prepare_split_round(model: ModularModel, config: SplitConfig, devices: Sequence[dict], *,
                        server_gflops: float, allowed_classes: Sequence[int] | None = None,
                        ) -> tuple[SplitServerSession, dict]:
    """Derive the split spec, measure block costs, plan cuts and open the server session.

    Args:
        model: The cloud's modular model.
        config: Split settings.
        devices: Per device ``{"name", "importance", "resources", "num_samples", "host_gflops"}``;
            ``resources`` may give ``memory_mb``, ``gflops``, ``bandwidth_mbps``, ``latency_s``
            and ``params_fraction``.
        server_gflops: Server compute speed (GFLOP/s) for the planner.
        allowed_classes: Loss restricted to these classes, or ``None``.

    Returns:
        ``(session, info)``; ``info`` holds the spec, stage names, costs, the plan, per device
        ``{"cut", "index", "bandwidth" (bytes/s), "slowdown", "latency", "memory" (bytes)}``, and ``excluded``
        (devices no cut fits, with the reason).

    Raises:
        ValueError: If ``client_sync`` is ``"step"``, no device can take part, or the planner fails.
    """
    if config.client_sync != "epoch":
        raise ValueError("split.client_sync='step' shares gradients every step, which the actor protocol "
                         "does not implement; use client_sync='epoch'")
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
    planned = [SplitDevice(speed=1e9 * _gflops(d), memory=_memory_bytes(d["resources"]), batch_size=b,
                           latency=float(d["resources"].get("latency_s") or 0.0), name=d["name"])
               for d, b in zip(kept, batches, strict=True)]
    total_bandwidth = sum(_bandwidth_bytes(d["resources"]) for d in kept)
    plan = plan_cuts(config, costs, planned, total_bandwidth, 1e9 * server_gflops)
    session = SplitServerSession(sub, stages, spec, [d["name"] for d in kept], list(plan.cuts),
                                 build_codec(config.codec), optimizer_settings(config),
                                 build_sampler(config, sizes), allowed_classes=allowed_classes)
    info = {
        "spec": spec.to_json(), "stages": session.stage_names, "client_sizes": sizes, "excluded": excluded,
        "costs": {"forward_flops": costs.forward_flops, "activation_bytes": costs.activation_bytes,
                  "param_bytes": costs.param_bytes},
        "plan": {"method": plan.method, "cuts": list(plan.cuts), "bandwidths": list(plan.bandwidths),
                 "device_times": list(plan.device_times), "round_time": plan.round_time,
                 "iterations": plan.iterations, "local_batches": batches, "total_bandwidth": total_bandwidth,
                 "server_gflops": server_gflops},
        "devices": {d["name"]: {"cut": plan.cuts[k], "index": k, "bandwidth": plan.bandwidths[k],
                                "slowdown": float(d["host_gflops"]) / _gflops(d),
                                "latency": planned[k].latency,
                                "memory": costs.device_memory(plan.cuts[k], batches[k])}
                    for k, d in enumerate(kept)},
    }
    return session, info


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


def emulated_epoch_seconds(device_records: Mapping[str, Sequence[dict]], server_records: Sequence[dict],
                           compute: Mapping[str, ComputeModel], links: Mapping[str, LinkModel],
                           sync_bytes: Mapping[str, tuple[float, float]] | None = None,
                           shared_bandwidth: float | None = None) -> dict[str, float]:
    """Emulated duration of one synchronous epoch from real measurements (the delay model).

    Per step ``t`` with active devices ``A_t``::

        T_t = max_{k in A_t} [emu_k(forward_k) + link_k(up_k)] + server_t
              + max_{k in A_t} [link_k(down_k) + emu_k(backward_k)]

    with ``emu_k(s) = s * slowdown_k`` (real host seconds scaled to the device's speed) and
    ``link_k(n) = latency_k + n / bandwidth_k``; ``up`` is the codec's exact activation bytes plus
    the labels, ``down`` the float32 gradient. The epoch ends with the device-part exchange,
    ``max_k [link_k(state up) + link_k(state down)]``; with ``shared_bandwidth`` (the EdgeSplit
    setting: the shares divide one pool and nothing else is sent meanwhile) it takes
    ``2 max_k latency_k + (sum up + sum down) / shared_bandwidth`` instead. The server runs at host
    speed.

    Returns:
        ``{"steps_s", "sync_s", "total_s", "device_compute_s"}`` (the last in real seconds).
    """
    by_step: dict[tuple[int, int], dict[str, dict]] = {}
    real_device = 0.0
    for name, records in device_records.items():
        for r in records:
            by_step.setdefault((r["epoch"], r["step"]), {})[name] = r
            real_device += r["forward_s"] + r["backward_s"]
    steps = 0.0
    for s in server_records:
        active = by_step.get((s["epoch"], s["step"]), {})
        up = max((compute[n].emulated_time(r["forward_s"])
                  + links[n].transfer_time((r["bits_up"] + r["label_bits"]) / 8)
                  for n, r in active.items()), default=0.0)
        down = max((links[n].transfer_time(r["bits_down"] / 8) + compute[n].emulated_time(r["backward_s"])
                    for n, r in active.items()), default=0.0)
        steps += up + s["server_s"] + down
    sync_bytes = sync_bytes or {}
    if shared_bandwidth is None:
        sync = max((links[n].transfer_time(u) + links[n].transfer_time(d) for n, (u, d) in sync_bytes.items()),
                   default=0.0)
    elif sync_bytes:
        pool = LinkModel(shared_bandwidth, max(links[n].latency for n in sync_bytes))
        sync = pool.transfer_time(sum(u for u, _ in sync_bytes.values())) + pool.transfer_time(
            sum(d for _, d in sync_bytes.values()))
    else:
        sync = 0.0
    return {"steps_s": steps, "sync_s": sync, "total_s": steps + sync, "device_compute_s": real_device}


def run_local_epochs(server: SplitServerSession, workers: Sequence[SplitDeviceWorker], epochs: int,
                     start_epoch: int = 0) -> list[dict]:
    """Drive a split round in-process with the actor protocol's call sequence (reference driver).

    Returns:
        Per epoch ``{"epoch", "loss", "accuracy", "samples", "records", "device_records", "sync_bytes"}``.

    Raises:
        ValueError: If ``workers`` are not the session's devices in client order.
    """
    if [w.name for w in workers] != server.devices:
        raise ValueError(f"workers {[w.name for w in workers]} must be the session's devices "
                         f"{server.devices}")
    history = []
    for epoch in range(start_epoch, start_epoch + epochs):
        pending: dict[int, bytes] = {}
        for step, row in enumerate(server.epoch_plan(epoch)):
            active = [k for k, count in enumerate(row) if count > 0]
            # A device's pending gradient rides with its next forward call, as over the actors.
            messages = [workers[k].forward(epoch, step, pending.pop(k, None)) for k in active]
            for k in list(pending):
                workers[k].backward(pending.pop(k))
            pending.update(zip(active, server.server_step(epoch, step, messages), strict=True))
        for k, grad in pending.items():
            workers[k].backward(grad)
        ends = [w.epoch_end() for w in workers]
        new = server.aggregate({e["device"]: e["state"] for e in ends})
        for w in workers:
            w.load(new[w.name])
        summary = server.epoch_summary()
        summary.update(epoch=epoch, device_records={e["device"]: e["records"] for e in ends},
                       sync_bytes={e["device"]: (float(len(e["state"])), float(len(new[e["device"]])))
                                   for e in ends})
        history.append(summary)
    return history
