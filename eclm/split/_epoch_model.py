"""Predicted epoch time of a split plan: the delay model applied to the planner's cost estimates.

For cuts ``c`` and bandwidth shares ``w`` the planner predicts what each device does in each global
step of an epoch (``b[t, k]`` samples from the sampler's plan) and times it with
:func:`eclm.split.epoch_time.epoch_seconds`, the function that times measured epochs:

    forward_tk  = (b_tk * F_dev(c_k) + K_dev(c_k)) / f_k / (1 + backward_factor)
    backward_tk = backward_factor * forward_tk
    up_tk       = b_tk * (cut_bytes(c_k) / ratio + 8)     down_tk     = b_tk * cut_bytes(c_k)
    server_t    = (sum_k b_tk * F_srv(c_k) + sum_{c in cuts of active devices} K_srv(c)) / f_s
    exchange_k  = state bytes of blocks [0, c_k)

(``F`` training FLOPs per sample, ``K`` the fixed cost of one call (``BlockCosts.call_flops``);
the server runs one pass per distinct cut in the step; 8 bytes of int64 label per sample; the
exchange goes up and comes back down over the whole pool).
:class:`EpochCostModel` also evaluates the same sum in closed form for many plans at once, merging
identical steps; tests check that both agree. The closed form splits into a part that depends on
the shares (the per-step maxima, :mod:`eclm.split._bandwidth`) and a constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from eclm.split._bandwidth import optimal_shares, shares_objective
from eclm.split.costs import BlockCosts
from eclm.split.epoch_time import epoch_seconds

if TYPE_CHECKING:
    from eclm.split.edgesplit import SplitDevice

LABEL_BYTES = 8.0  # int64 label sent with every sample


@dataclass(frozen=True, eq=False)
class EpochCostModel:
    """Per-sample costs of every device at every cut, and the epoch's step plan.

    Attributes:
        forward: ``(N, L)`` device seconds per sample, forward, at cut ``j + 1``.
        backward: ``(N, L)`` device seconds per sample, backward.
        forward_call: ``(N, L)`` device seconds per forward call whatever the batch.
        backward_call: ``(N, L)`` device seconds per backward call.
        up: ``(N, L)`` bytes per sample sent (compressed activation and label).
        down: ``(N, L)`` bytes per sample received (the float32 gradient).
        server: ``(N, L)`` server seconds per sample of device ``k`` at each cut.
        server_call: ``(L,)`` server seconds of one pass (forward and backward) of a cut group.
        exchange: ``(L,)`` bytes of a device part at each cut (each way at epoch end).
        latency: ``(N,)`` one-way link latency in seconds.
        batches: ``(T, N)`` samples of each device in each step.
        total_bandwidth: ``W`` in bytes/s; the epoch-end exchange uses all of it.
    """

    forward: np.ndarray
    backward: np.ndarray
    forward_call: np.ndarray
    backward_call: np.ndarray
    up: np.ndarray
    down: np.ndarray
    server: np.ndarray
    server_call: np.ndarray
    exchange: np.ndarray
    latency: np.ndarray
    batches: np.ndarray
    total_bandwidth: float

    def __post_init__(self) -> None:
        rows, counts = np.unique(self.batches, axis=0, return_counts=True)
        keep = rows.sum(axis=1) > 0  # a step without samples costs nothing
        object.__setattr__(self, "_rows", rows[keep].astype(float))
        object.__setattr__(self, "_counts", counts[keep].astype(float))

    @property
    def num_devices(self) -> int:
        """``N``."""
        return self.latency.size

    def _take(self, table: np.ndarray, cuts: np.ndarray) -> np.ndarray:
        """``table[k, cuts[..., k] - 1]`` for every device: shape of ``cuts``."""
        return table[np.arange(self.num_devices), cuts - 1]

    def phases(self, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The bandwidth-dependent part as rows of (seconds, bytes), and the constant part.

        Args:
            cuts: ``(M, N)`` cut tuples (1-based).

        Returns:
            ``(a, d, weights, active, constant)``: ``a`` and ``d`` of shape ``(M, 2R, N)`` (forward
            then backward phase of each of the ``R`` distinct steps), ``weights`` ``(2R,)``,
            ``active`` ``(2R, N)``, ``constant`` ``(M,)`` seconds of server compute and exchange.
        """
        rows, counts = self._rows[None], self._counts
        lat = self.latency[None, None, :]
        fwd, bwd, fwd_call, bwd_call, up, down, srv = (
            self._take(t, cuts)[:, None, :] for t in (self.forward, self.backward, self.forward_call,
                                                       self.backward_call, self.up, self.down, self.server))
        a = np.concatenate([rows * fwd + fwd_call + lat, lat + rows * bwd + bwd_call], axis=1)
        d = np.concatenate([rows * up, rows * down], axis=1)
        active = np.concatenate([self._rows > 0] * 2)
        server = (counts[None, :, None] * rows * srv).sum(axis=(1, 2))
        server += self._group_calls(cuts, self._rows > 0) @ counts
        sync = 2 * self.latency.max() + 2 * self.exchange[cuts - 1].sum(axis=1) / self.total_bandwidth
        return a, d, np.concatenate([counts, counts]), active, server + sync

    def _group_calls(self, cuts: np.ndarray, active: np.ndarray) -> np.ndarray:
        """``(M, S)`` server seconds of the passes of each step: one per distinct active cut."""
        onehot = (cuts[:, :, None] == np.arange(1, self.server_call.size + 1)).astype(float)  # (M, N, L)
        present = np.einsum("sk,mkj->msj", active.astype(float), onehot) > 0
        return present @ self.server_call

    def seconds(self, cuts: np.ndarray, shares: np.ndarray) -> np.ndarray:
        """Epoch seconds of ``(M, N)`` cut tuples with ``(M, N)`` shares (closed form)."""
        a, d, weights, active, constant = self.phases(cuts)
        return shares_objective(a, d, weights, active, shares)[0] + constant

    def solve(self, cuts: np.ndarray, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
        """The best shares for each of ``(M, N)`` cut tuples: ``(epoch seconds (M,), shares (M, N))``."""
        a, d, weights, active, constant = self.phases(cuts)
        values, shares, _ = optimal_shares(a, d, weights, active, self.total_bandwidth, tol=tol)
        return values + constant, shares

    def epoch_time(self, cuts: Sequence[int], shares: Sequence[float]) -> dict[str, float]:
        """One plan timed step by step with :func:`~eclm.split.epoch_time.epoch_seconds`."""
        c = np.asarray(cuts, dtype=int)
        b, active = self.batches.astype(float), self.batches > 0
        forward = b * self._take(self.forward, c) + active * self._take(self.forward_call, c)
        backward = b * self._take(self.backward, c) + active * self._take(self.backward_call, c)
        server = (b * self._take(self.server, c)).sum(axis=1) + self._group_calls(c[None], active)[0]
        return epoch_seconds(
            forward, backward, b * self._take(self.up, c), b * self._take(self.down, c), server, active,
            np.asarray(shares, dtype=float), self.latency, sync_up=self.exchange[c - 1],
            shared_bandwidth=self.total_bandwidth)


def build_epoch_model(costs: BlockCosts, devices: Sequence[SplitDevice], total_bandwidth: float,
                      server_speed: float, compression_ratio: float, step_batches: np.ndarray,
                      ) -> EpochCostModel:
    """Tabulate the per-sample costs of every device at every cut.

    Raises:
        ValueError: If ``step_batches`` is not ``(T, N)`` non-negative integers, exceeds a device's
            ``batch_size`` (its memory is checked at that batch), or leaves a device without samples.
    """
    batches = _checked_batches(step_batches, devices)
    cuts = list(costs.cuts)
    share = 1.0 / (1.0 + costs.backward_factor)  # forward's part of a training pass
    dev_flops = np.array([costs.device_flops(c) for c in cuts]) * share
    dev_calls = np.array([costs.device_call_flops(c) for c in cuts]) * share
    speeds = np.array([dev.speed for dev in devices])[:, None]
    cut_bytes = np.array([costs.cut_bytes(c) for c in cuts])
    n = len(devices)
    return EpochCostModel(
        forward=dev_flops[None, :] / speeds,
        backward=costs.backward_factor * dev_flops[None, :] / speeds,
        forward_call=dev_calls[None, :] / speeds,
        backward_call=costs.backward_factor * dev_calls[None, :] / speeds,
        up=np.tile(cut_bytes / compression_ratio + LABEL_BYTES, (n, 1)),
        down=np.tile(cut_bytes, (n, 1)),
        server=np.tile(np.array([costs.server_flops(c) for c in cuts]) / server_speed, (n, 1)),
        server_call=np.array([costs.server_call_flops(c) for c in cuts]) / server_speed,
        exchange=np.array([costs.exchange_bytes(c) for c in cuts]),
        latency=np.array([dev.latency for dev in devices], dtype=float),
        batches=batches,
        total_bandwidth=float(total_bandwidth),
    )


def _checked_batches(step_batches: np.ndarray, devices: Sequence[SplitDevice]) -> np.ndarray:
    batches = np.asarray(step_batches)
    n = len(devices)
    if batches.ndim != 2 or batches.shape[1] != n or batches.shape[0] < 1:
        raise ValueError(f"step_batches must have shape (steps, {n}), got {batches.shape}")
    if not np.issubdtype(batches.dtype, np.integer) or (batches < 0).any():
        raise ValueError("step_batches must hold non-negative integer sample counts")
    for k, dev in enumerate(devices):
        most = int(batches[:, k].max())
        if most == 0:
            raise ValueError(f"device {dev.name or k!r} (index {k}) has no samples in step_batches")
        if most > dev.batch_size:
            raise ValueError(f"device {dev.name or k!r} (index {k}) gets {most} samples in a step but its "
                             f"memory is checked at batch_size {dev.batch_size}")
    return batches.astype(np.int64)
