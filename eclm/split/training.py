"""In-process parallel split learning: many client-side parts, one server side, one loss.

One training step (ALGORITHMS.md sections 3 and 4):
    1. every client active in the step (sampler gave it ``b[t, k] > 0``) runs its client part
       on its local batch;
    2. the smashed activation goes through the codec; the server receives the reconstruction
       (the payload size is charged to the client's uplink);
    3. the server runs its part on the concatenated activations of each cut group, computes
       one mean cross-entropy over the whole global batch, backpropagates and steps;
    4. each client receives the gradient of the loss with respect to the reconstruction it
       sent (uncompressed float32, charged to the downlink), backpropagates it through its own
       part (straight-through: the codec is skipped in the backward pass) and steps.

Clients are grouped by cut (``groups``): members of a group share one architecture. With
``client_sync="epoch"`` each client steps on its own gradient and the group's client parts are
averaged (FedAvg, weighted by samples processed) at the end of the epoch. With
``client_sync="step"`` the gradients of the active members are *summed* and every member
applies the sum, so the copies stay identical; because the loss is a mean over the global
batch, the sum is exactly the gradient a centralised model would get (GPSL averages instead;
summing keeps the learning rate comparable to centralised training).

The server side may be one module for every group or a mapping group -> module; modules of
different groups may share blocks (the server running ``[c, L)`` for several cuts), and each
shared parameter is updated once per step. Everything runs on the tensors' device; the caller
places modules and data.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from eclm.split.codecs.base import SmashedCodec
from eclm.split.norms import batch_safe_norms
from eclm.split.samplers.base import LocalBatchSampler

__all__ = ["EpochMetrics", "OptimizerSettings", "ParallelSplitTrainer", "replicate"]

ClientSync = Literal["epoch", "step"]


@dataclass(frozen=True)
class OptimizerSettings:
    """SGD settings shared by the server and client optimisers."""

    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"OptimizerSettings.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"OptimizerSettings.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"OptimizerSettings.weight_decay must be >= 0, got {self.weight_decay}")

    def build(self, params: Sequence[nn.Parameter]) -> torch.optim.SGD:
        """An SGD optimiser over ``params``."""
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class EpochMetrics:
    """What one training epoch did.

    Attributes:
        epoch: epoch number given to the sampler.
        loss: sample-weighted mean training cross-entropy over the epoch (before each update).
        accuracy: fraction of training samples classified correctly (before each update).
        steps: global steps taken.
        samples: samples processed per client.
        bits_up: exact codec payload bits each client sent (sum of ``size_bits``).
        bits_down: gradient bits each client received (32 per element).
    """

    epoch: int
    loss: float
    accuracy: float
    steps: int
    samples: tuple[int, ...]
    bits_up: tuple[int, ...]
    bits_down: tuple[int, ...]

    @property
    def bytes_up(self) -> tuple[float, ...]:
        """Uplink bytes per client."""
        return tuple(b / 8 for b in self.bits_up)

    @property
    def bytes_down(self) -> tuple[float, ...]:
        """Downlink bytes per client."""
        return tuple(b / 8 for b in self.bits_down)


def replicate(module: nn.Module, count: int) -> list[nn.Module]:
    """``count`` independent deep copies of ``module`` (identical initial client parts)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return [copy.deepcopy(module) for _ in range(count)]


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class ParallelSplitTrainer:
    """Owns the client parts, the server side and their optimisers across epochs.

    Args:
        client_parts: one module per client (distinct objects); input ``(b, ...)`` local
            samples, output the smashed activation ``(b, ...)``.
        server_part: module (or mapping group -> module) from smashed activations to logits
            ``(b, num_classes)``.
        codec: compresses the uplink activations.
        sampler: plans per-step local batches; its client sizes must match the data.
        optimizer: SGD settings for every optimiser.
        groups: cut group of each client (default: all in one group).
        client_sync: ``"epoch"`` (FedAvg at epoch end) or ``"step"`` (summed gradients).

    Raises:
        ValueError: on mismatched lengths, shared client modules, a group whose members have
            different parameter names/shapes, a missing server part for a group, or (with
            ``client_sync="step"``) group members that do not start identical.
    """

    def __init__(
        self,
        client_parts: Sequence[nn.Module],
        server_part: nn.Module | Mapping[Hashable, nn.Module],
        codec: SmashedCodec,
        sampler: LocalBatchSampler,
        *,
        optimizer: OptimizerSettings | None = None,
        groups: Sequence[Hashable] | None = None,
        client_sync: ClientSync = "epoch",
    ) -> None:
        self.client_parts = list(client_parts)
        num_clients = len(self.client_parts)
        if num_clients == 0:
            raise ValueError("client_parts must not be empty")
        if len({id(m) for m in self.client_parts}) != num_clients:
            raise ValueError("client_parts must be distinct module objects (use replicate())")
        if sampler.num_clients != num_clients:
            raise ValueError(
                f"sampler has {sampler.num_clients} clients but {num_clients} client_parts were given"
            )
        if client_sync not in ("epoch", "step"):
            raise ValueError(f"client_sync must be 'epoch' or 'step', got {client_sync!r}")
        self.groups = list(groups) if groups is not None else [0] * num_clients
        if len(self.groups) != num_clients:
            raise ValueError(f"groups has {len(self.groups)} entries for {num_clients} clients")
        self.members: dict[Hashable, list[int]] = {}
        for k, g in enumerate(self.groups):
            self.members.setdefault(g, []).append(k)
        self.server_parts = self._server_parts(server_part)
        self._check_groups(client_sync)
        self.codec, self.sampler, self.client_sync = codec, sampler, client_sync
        self.optimizer = optimizer or OptimizerSettings()
        # Deduplicate by identity: blocks shared by several cut groups are updated once.
        unique: dict[int, nn.Parameter] = {}
        for part in self.server_parts.values():
            unique.update((id(p), p) for p in part.parameters())
        self.server_optimizer = self.optimizer.build(list(unique.values()))
        self.client_optimizers = [self.optimizer.build(list(m.parameters())) for m in self.client_parts]
        self.epochs_done = 0

    def _server_parts(
        self, server_part: nn.Module | Mapping[Hashable, nn.Module]
    ) -> dict[Hashable, nn.Module]:
        if isinstance(server_part, nn.Module):
            return {g: server_part for g in self.members}
        missing = [g for g in self.members if g not in server_part]
        if missing:
            raise ValueError(f"server_part has no module for cut group(s) {missing}")
        return {g: server_part[g] for g in self.members}

    def _check_groups(self, client_sync: str) -> None:
        for g, ks in self.members.items():
            ref = {n: p.shape for n, p in self.client_parts[ks[0]].named_parameters()}
            for k in ks[1:]:
                if {n: p.shape for n, p in self.client_parts[k].named_parameters()} != ref:
                    raise ValueError(
                        f"client {k} has different parameters than client {ks[0]} in cut group {g!r}"
                    )
                if client_sync == "step" and not _same_weights(
                    self.client_parts[ks[0]], self.client_parts[k]
                ):
                    raise ValueError(
                        f"client_sync='step' needs identical initial weights; "
                        f"client {k} differs in group {g!r}"
                    )

    def client_model(self, group: Hashable = 0) -> nn.Module:
        """The (averaged) client part of a cut group, i.e. its first member's module."""
        if group not in self.members:
            raise ValueError(f"unknown cut group {group!r}; groups are {list(self.members)}")
        return self.client_parts[self.members[group][0]]

    def train_epoch(
        self, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]], epoch: int | None = None
    ) -> EpochMetrics:
        """Run one epoch of parallel split learning.

        Args:
            client_data: per client ``(x, y)`` with ``x: (n_k, ...)`` and ``y: (n_k,)`` int64.
            epoch: sampler epoch (default: the number of epochs already run).

        Returns:
            The epoch's :class:`EpochMetrics`.

        Raises:
            ValueError: if the data sizes do not match the sampler's client sizes.
        """
        sizes = [int(x.shape[0]) for x, _ in client_data]
        if sizes != self.sampler.client_sizes.tolist() or any(
            int(y.shape[0]) != int(x.shape[0]) for x, y in client_data
        ):
            raise ValueError(
                f"client_data sizes {sizes} do not match sampler sizes {self.sampler.client_sizes.tolist()}"
            )
        epoch = self.epochs_done if epoch is None else epoch
        n = len(self.client_parts)
        samples, bits_up, bits_down = [0] * n, [0] * n, [0] * n
        loss_sum, correct, steps = 0.0, 0, 0
        for part in [*self.client_parts, *self.server_parts.values()]:
            part.train()
        for step_indices in self.sampler.epoch_indices(epoch):
            step_loss, step_correct = self._train_step(client_data, step_indices, samples, bits_up, bits_down)
            loss_sum += step_loss
            correct += step_correct
            steps += 1
        if self.client_sync == "epoch":
            self._average_groups(samples)
        self.epochs_done += 1
        total = max(1, sum(samples))
        return EpochMetrics(
            epoch, loss_sum / total, correct / total, steps, tuple(samples), tuple(bits_up), tuple(bits_down)
        )

    def _train_step(
        self,
        client_data: Sequence[tuple[torch.Tensor, torch.Tensor]],
        step_indices: list,
        samples: list[int],
        bits_up: list[int],
        bits_down: list[int],
    ) -> tuple[float, int]:
        """One global step; updates the traffic tallies in place.

        Returns:
            ``(summed loss over the global batch, correct predictions)``.
        """
        sent: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for k, indices in enumerate(step_indices):
            if indices.size == 0:
                continue
            with batch_safe_norms(self.client_parts[k], int(indices.size)):
                smashed = self.client_parts[k](client_data[k][0][torch.from_numpy(indices)])
            encoded = self.codec.encode(smashed.detach())
            # The server's copy starts a new graph: this is the network boundary.
            received = self.codec.decode(encoded).to(smashed.device).requires_grad_(True)
            sent[k] = (smashed, received)
            bits_up[k] += encoded.size_bits
            samples[k] += int(indices.size)
        # Logits and labels are both laid out group by group, members in client order.
        logits, labels = [], []
        for g, ks in self.members.items():
            present = [k for k in ks if k in sent]
            if present:
                group_batch = torch.cat([sent[k][1] for k in present])
                with batch_safe_norms(self.server_parts[g], int(group_batch.shape[0])):
                    logits.append(self.server_parts[g](group_batch))
                labels.extend(client_data[k][1][torch.from_numpy(step_indices[k])] for k in present)
        all_logits, all_labels = torch.cat(logits), torch.cat(labels)
        loss = F.cross_entropy(all_logits, all_labels)
        self.server_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.server_optimizer.step()
        for k, (smashed, received) in sent.items():
            self.client_optimizers[k].zero_grad(set_to_none=True)
            smashed.backward(received.grad)  # straight-through: the codec is skipped backwards
            bits_down[k] += 32 * received.grad.numel()
        self._step_clients(list(sent))
        return float(loss.detach()) * all_labels.numel(), int((all_logits.argmax(dim=1) == all_labels).sum())

    def _step_clients(self, active: list[int]) -> None:
        if self.client_sync == "epoch":
            for k in active:
                self.client_optimizers[k].step()
            return
        for ks in self.members.values():
            grads_from = [k for k in ks if k in active]
            if not grads_from:
                continue
            params = [list(self.client_parts[k].parameters()) for k in ks]
            for j, p0 in enumerate(params[0]):
                grads = [params[ks.index(k)][j].grad for k in grads_from]
                if all(g is None for g in grads):  # frozen or unused parameter: leave untouched
                    continue
                total = torch.stack([g if g is not None else torch.zeros_like(p0) for g in grads]).sum(dim=0)
                for member_params in params:
                    member_params[j].grad = total.clone()
            for k in ks:  # every member steps (momentum buffers stay identical too)
                self.client_optimizers[k].step()

    @torch.no_grad()
    def _average_groups(self, samples: list[int]) -> None:
        """FedAvg of each group's client parts, weighted by samples processed this epoch."""
        for ks in self.members.values():
            contributors = [k for k in ks if samples[k] > 0]
            if len(ks) < 2 or not contributors:
                continue
            weight = torch.tensor([samples[k] for k in contributors], dtype=torch.float64)
            weight /= weight.sum()
            states = [self.client_parts[k].state_dict() for k in contributors]
            merged = {}
            for name, ref in states[0].items():
                if ref.is_floating_point():
                    stacked = torch.stack([s[name].to(torch.float64) for s in states])
                    merged[name] = (weight.view(-1, *[1] * ref.dim()) * stacked).sum(dim=0).to(ref.dtype)
                else:  # integer buffers (counters): keep the first contributor's
                    merged[name] = ref.clone()
            for k in ks:
                self.client_parts[k].load_state_dict(merged)
                # As in FedAvg, every round starts a fresh local optimiser state.
                self.client_optimizers[k].state.clear()
