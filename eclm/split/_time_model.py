"""Per-iteration time model of parallel split learning and the bandwidth equaliser.

For device ``i`` at cut ``c`` with bandwidth share ``b`` (bytes/s):

    T_i(c, b) = C_i(c) + D_i(c) / b
    C_i(c)    = (batch_i * F_dev(c) + K_dev(c)) / f_i + (batch_i * F_srv(c) + K_srv(c)) / f_s
                + 2 * latency_i
    D_i(c)    = batch_i * cut_bytes(c) * (1 / compression_ratio + 1)

``C`` is everything bandwidth does not change (device and server compute, with the fixed cost ``K``
of one call of each side, and one uplink and one downlink latency); ``D`` is the bytes of one step
(compressed smashed activations up, uncompressed gradients down, as in Mask-Encoded
Sparsification).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from eclm.split.costs import BlockCosts

if TYPE_CHECKING:
    from eclm.split.edgesplit import SplitDevice

# Bisection steps; 200 halvings take any float bracket below machine precision.
_BISECTION_STEPS = 200


@dataclass(frozen=True)
class CostTable:
    """Dense ``(N, L)`` tables of the time model; column ``j`` is cut ``j + 1``.

    Attributes:
        compute: ``C[i, j]`` seconds per iteration that do not depend on bandwidth.
        traffic: ``D[i, j]`` bytes per iteration over the link.
        feasible: ``M[i, j]`` whether the device memory holds cut ``j + 1``.
    """

    compute: np.ndarray
    traffic: np.ndarray
    feasible: np.ndarray

    def times(self, cuts: Sequence[int], bandwidths: np.ndarray) -> np.ndarray:
        """Per-device iteration time in seconds for ``cuts`` (1-based) and ``bandwidths``."""
        rows = np.arange(len(cuts))
        cols = np.asarray(cuts) - 1
        return _time(self.compute[rows, cols], self.traffic[rows, cols], bandwidths)


def _time(compute: np.ndarray, traffic: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """``C + D / b`` with ``D / 0 = 0`` when nothing is sent and ``inf`` otherwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        comm = np.where(traffic > 0, traffic / bandwidths, 0.0)
    return compute + comm


def build_cost_table(
    costs: BlockCosts,
    devices: Sequence[SplitDevice],
    server_speed: float,
    compression_ratio: float,
) -> CostTable:
    """Evaluate the time model for every device and cut, and check memory feasibility.

    Raises:
        ValueError: if a device fits no cut; the message names the device, its memory and the
            smallest memory any cut needs.
    """
    cuts = list(costs.cuts)
    n, num_cuts = len(devices), len(cuts)
    compute = np.empty((n, num_cuts))
    traffic = np.empty((n, num_cuts))
    feasible = np.empty((n, num_cuts), dtype=bool)
    byte_factor = 1.0 / compression_ratio + 1.0
    for i, dev in enumerate(devices):
        needs = []
        for j, c in enumerate(cuts):
            compute[i, j] = (
                (dev.batch_size * costs.device_flops(c) + costs.device_call_flops(c)) / dev.speed
                + (dev.batch_size * costs.server_flops(c) + costs.server_call_flops(c)) / server_speed
                + 2.0 * dev.latency
            )
            traffic[i, j] = dev.batch_size * costs.cut_bytes(c) * byte_factor
            need = costs.device_memory(c, dev.batch_size)
            needs.append(need)
            feasible[i, j] = need <= dev.memory
        if not feasible[i].any():
            smallest = min(needs)
            raise ValueError(
                f"device {dev.name or i!r} (index {i}) has memory {dev.memory:.6g} bytes but the "
                f"smallest cut (cut {cuts[needs.index(smallest)]}) needs {smallest:.6g} bytes "
                f"at batch {dev.batch_size}"
            )
    return CostTable(compute=compute, traffic=traffic, feasible=feasible)


def equalise_bandwidth(
    compute: np.ndarray, traffic: np.ndarray, total_bandwidth: float
) -> tuple[np.ndarray, float]:
    """Split ``total_bandwidth`` so all devices finish together (min-max optimal for fixed cuts).

    Solves ``sum_i D_i / (T* - C_i) = B`` for ``T*`` by bisection and sets
    ``b_i = D_i / (T* - C_i)``. Devices that send nothing need no bandwidth; if such a device is
    the straggler (``T* = its C_i``), the spare bandwidth is handed out proportionally, which can
    only shorten the others. The returned shares always sum to ``B``.

    Args:
        compute: ``(N,)`` bandwidth-independent seconds ``C_i``.
        traffic: ``(N,)`` bytes per iteration ``D_i``.
        total_bandwidth: ``B`` in bytes/s.

    Returns:
        ``(bandwidths, T*)`` with ``bandwidths`` of shape ``(N,)`` in bytes/s.
    """
    compute = np.asarray(compute, dtype=float)
    traffic = np.asarray(traffic, dtype=float)
    n = compute.size
    sending = traffic > 0
    if not sending.any():
        return np.full(n, total_bandwidth / n), float(compute.max())
    lo = float(compute[sending].max())
    # At hi every term is <= D_i / (hi - lo), so the demand is <= B: a valid upper bracket.
    hi = lo + float(traffic.sum()) / total_bandwidth
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        demand = float(np.sum(traffic[sending] / (mid - compute[sending])))
        if demand > total_bandwidth:
            lo = mid
        else:
            hi = mid
    target = max(hi, float(compute.max()))
    bandwidths = np.zeros(n)
    bandwidths[sending] = traffic[sending] / (target - compute[sending])
    # Hand out the (tiny, or straggler-induced) slack so the shares sum to B exactly.
    bandwidths *= total_bandwidth / bandwidths.sum()
    return bandwidths, float(_time(compute, traffic, bandwidths).max())


def best_cuts_for_bandwidth(table: CostTable, bandwidths: np.ndarray) -> list[int]:
    """For fixed bandwidth shares, each device's feasible cut (1-based) with least ``T_i``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        comm = np.where(table.traffic > 0, table.traffic / bandwidths[:, None], 0.0)
    times = np.where(table.feasible, table.compute + comm, np.inf)
    # A device with no bandwidth can only use a cut that sends nothing; if it has none, rank its
    # feasible cuts by traffic so the choice stays feasible and the equaliser can fix it.
    stuck = ~np.isfinite(times).any(axis=1)
    times[stuck] = np.where(table.feasible[stuck], table.traffic[stuck], np.inf)
    # argmin breaks ties towards the shallower cut: less device memory and compute.
    return [int(j) + 1 for j in np.argmin(times, axis=1)]
