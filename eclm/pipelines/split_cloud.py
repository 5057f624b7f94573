"""The cloud side of parallel split learning: one server model for many device parts.

A split round (see ``docs/split_learning.md``) trains *one* sub-model with several devices.
:func:`eclm.pipelines.split_planning.prepare_split_round` plans it and opens the
:class:`SplitServerSession` defined here:

1. Every global step the session receives the active devices' smashed activations (codec
   payloads), runs stages ``[cut, L)`` per cut group on the concatenation, computes *one* mean
   cross-entropy over the global batch, steps the server optimiser once, and returns each device
   the gradient of the loss with respect to the activation it sent.
2. At the end of every epoch :meth:`SplitServerSession.aggregate` averages every chain stage over
   all copies that trained it (device parts of deeper-cut devices, and the server's copy for
   shallower-cut devices), weighted by the samples that passed through each copy, and sends the
   devices their new prefixes: after each round there is one model.

The cloud service's ``split_*`` methods (:mod:`eclm.pipelines.split_service`) wrap the session;
:func:`eclm.campaign.split_round.run_split_round` drives them, in-process or over Ray actors, with
one call sequence. Pure torch, no Ray.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from eclm.modules import (
    SubModelSpec,
    pack_state,
    unpack_state,
)
from eclm.pipelines.split_edge import (
    Stages,
    cut_chain,
    pack_gradient,
    segment_state,
    unpack_smashed,
)
from eclm.split import LocalBatchSampler, OptimizerSettings
from eclm.split.codecs.base import SmashedCodec
from eclm.split.norms import batch_safe_norms

__all__ = ["SplitServerSession"]


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
