"""EdgeSplit: per-device cut layers and bandwidth shares for parallel split learning.

Chooses a cut ``c_i in 1..L`` per device and bandwidth shares ``b_i`` with ``sum b_i = B``, subject
to each device's memory, for one of two objectives (docs/split_learning.md):

* ``"epoch"`` (default): the seconds of a whole epoch in the delay model that times measured
  epochs (:mod:`eclm.split.epoch_time`): every global step of the sampler's plan with its
  forward and backward phases, per-message latency, server compute summed over devices, and the
  epoch-end exchange of device parts over the pool. Cost model in :mod:`eclm.split._epoch_model`,
  shares in :mod:`eclm.split._bandwidth`, cut search in :mod:`eclm.split._epoch_search`.
* ``"iteration"``: the EdgeSplit paper's synchronous iteration time ``max_i T_i`` (the round
  waits for the straggler), :mod:`eclm.split._time_model`.

Every plan reports both: ``round_time`` (per-iteration model) and, given the step plan,
``epoch_time``. The cut convention (device runs blocks ``[0, c)``) is in :mod:`eclm.split.costs`.

Planners:
    * :func:`plan_edgesplit` - the alternating algorithm (Zhang et al., arXiv 2403.15815); for the
      epoch objective followed by a local search with re-optimised shares.
    * :func:`brute_force_plan` - every cut tuple with its optimal shares; the true optimum for
      small instances, used to check the planner.
    * :func:`uniform_cut_plan` / :func:`best_common_cut_plan` - one cut for everyone and equal
      bandwidth, the baselines.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from eclm.split import _epoch_search
from eclm.split._epoch_model import EpochCostModel, build_epoch_model
from eclm.split._time_model import CostTable, best_cuts_for_bandwidth, build_cost_table, equalise_bandwidth
from eclm.split.costs import BlockCosts

__all__ = [
    "Objective",
    "SplitDevice",
    "SplitPlan",
    "best_common_cut_plan",
    "brute_force_plan",
    "plan_edgesplit",
    "uniform_cut_plan",
]

Objective = Literal["epoch", "iteration"]

# Brute force refuses instances larger than this many cut tuples (per-iteration / epoch objective:
# an epoch tuple needs a convex solve for its shares instead of one bisection).
_MAX_BRUTE_FORCE_TUPLES = 2_000_000
_MAX_BRUTE_FORCE_EPOCH_TUPLES = 200_000


@dataclass(frozen=True)
class SplitDevice:
    """Resources of one edge device taking part in split learning.

    Attributes:
        speed: sustained training throughput in FLOP/s.
        memory: memory available for training in bytes.
        batch_size: local samples per iteration (the largest; memory is checked at it).
        latency: one-way link latency in seconds (paid once up and once down per iteration).
        name: label used in error messages and reports.
    """

    speed: float
    memory: float
    batch_size: int
    latency: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("speed", "memory"):
            value = getattr(self, field)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"SplitDevice.{field} must be finite and > 0, got {value}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"SplitDevice.batch_size must be an int >= 1, got {self.batch_size!r}")
        if not math.isfinite(self.latency) or self.latency < 0:
            raise ValueError(f"SplitDevice.latency must be finite and >= 0, got {self.latency}")


@dataclass(frozen=True)
class SplitPlan:
    """A decision: cut and bandwidth per device, with the predicted times.

    Attributes:
        cuts: cut per device (device runs blocks ``[0, cut)``).
        bandwidths: bytes/s per device; they sum to the total bandwidth.
        device_times: per-iteration model: predicted seconds per iteration of each device.
        round_time: per-iteration model: seconds per synchronous iteration, ``max(device_times)``.
        method: which planner produced the plan.
        iterations: alternating rounds used (0 for non-iterative planners).
        epoch_time: epoch model: predicted seconds per epoch (steps and exchange); ``None`` when
            the planner was given no step plan.
        objective: what the planner minimised, ``"epoch"`` or ``"iteration"``.
    """

    cuts: tuple[int, ...]
    bandwidths: tuple[float, ...]
    device_times: tuple[float, ...]
    round_time: float
    method: str
    iterations: int = 0
    epoch_time: float | None = None
    objective: str = "iteration"


def _validate(
    devices: Sequence[SplitDevice], total_bandwidth: float, server_speed: float, ratio: float
) -> None:
    if len(devices) == 0:
        raise ValueError("devices must not be empty")
    if not math.isfinite(total_bandwidth) or total_bandwidth <= 0:
        raise ValueError(f"total_bandwidth must be finite and > 0 bytes/s, got {total_bandwidth}")
    if not math.isfinite(server_speed) or server_speed <= 0:
        raise ValueError(f"server_speed must be finite and > 0 FLOP/s, got {server_speed}")
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"compression_ratio must be finite and > 0, got {ratio}")


def _plan(
    table: CostTable,
    cuts: Sequence[int],
    bandwidths: np.ndarray,
    method: str,
    iterations: int = 0,
    epoch: EpochCostModel | None = None,
    objective: str = "iteration",
) -> SplitPlan:
    times = table.times(cuts, bandwidths)
    return SplitPlan(
        cuts=tuple(int(c) for c in cuts),
        bandwidths=tuple(float(b) for b in bandwidths),
        device_times=tuple(float(t) for t in times),
        round_time=float(times.max()),
        method=method,
        iterations=iterations,
        epoch_time=None if epoch is None else epoch.epoch_time(cuts, bandwidths)["total_s"],
        objective=objective,
    )


def _setting(
    costs: BlockCosts,
    devices: Sequence[SplitDevice],
    total_bandwidth: float,
    server_speed: float,
    ratio: float,
    step_batches: ArrayLike | None,
    objective: str,
) -> tuple[CostTable, EpochCostModel | None]:
    """Validate the arguments; the per-iteration table and, given a step plan, the epoch model."""
    _validate(devices, total_bandwidth, server_speed, ratio)
    if objective not in ("epoch", "iteration"):
        raise ValueError(f"objective must be 'epoch' or 'iteration', got {objective!r}")
    if objective == "epoch" and step_batches is None:
        raise ValueError(
            "objective='epoch' needs step_batches (samples per device in every step of an epoch, "
            "the sampler's plan); use objective='iteration' for the per-iteration model"
        )
    table = build_cost_table(costs, devices, server_speed, ratio)
    if step_batches is None:
        return table, None
    epoch = build_epoch_model(costs, devices, total_bandwidth, server_speed, ratio, np.asarray(step_batches))
    return table, epoch


def _equalised(table: CostTable, cuts: Sequence[int], total_bandwidth: float) -> tuple[np.ndarray, float]:
    rows = np.arange(len(cuts))
    cols = np.asarray(cuts) - 1
    return equalise_bandwidth(table.compute[rows, cols], table.traffic[rows, cols], total_bandwidth)


def _alternate(
    table: CostTable, bandwidths: np.ndarray, total_bandwidth: float, max_iters: int
) -> tuple[list[int], np.ndarray, float, int]:
    """Run (a) best cut per device for fixed ``b``, (b) equalise ``b`` for fixed cuts, until
    the round time stops falling. Returns the best (cuts, bandwidths, round time, iterations)."""
    best: tuple[list[int], np.ndarray, float, int] | None = None
    for iteration in range(1, max_iters + 1):
        cuts = best_cuts_for_bandwidth(table, bandwidths)
        bandwidths, round_time = _equalised(table, cuts, total_bandwidth)
        # Relative tolerance: bisection noise must not count as progress.
        if best is not None and round_time >= best[2] * (1.0 - 1e-12):
            break
        best = (cuts, bandwidths, round_time, iteration)
    assert best is not None
    return best


def plan_edgesplit(
    costs: BlockCosts,
    devices: Sequence[SplitDevice],
    total_bandwidth: float,
    server_speed: float,
    *,
    compression_ratio: float = 1.0,
    max_iters: int = 50,
    objective: Objective = "epoch",
    step_batches: ArrayLike | None = None,
) -> SplitPlan:
    """Choose a cut and a bandwidth share per device with the alternating algorithm.

    Per-iteration objective (the paper's): start with equal bandwidth ``B / N``; then alternate
    (a) with ``b`` fixed, give each device the memory-feasible cut minimising its own ``T_i``, and
    (b) with the cuts fixed, equalise finish times by bisection on ``T*`` (``sum_i D_i / (T* - C_i)
    = B``); stop when the round time stops falling. Alternation is a local search, so eclm also
    restarts it from every cut that fits all devices (with equalised bandwidth) and keeps the best.

    Epoch objective: the same alternation on the epoch time — (a) with the shares fixed, each
    device in turn moves to the cut that shortens the *epoch* most; (b) with the cuts fixed, the
    optimal shares (a convex problem, solved to a certified tolerance) — started from the
    per-iteration plan's cuts and from every common cut, then a local search that moves one
    device's cut at a time with the shares re-optimised for each candidate. The result is never
    slower per epoch than any common cut or the per-iteration plan's cuts.

    Args:
        costs: per-block cost profile of the model.
        devices: participating devices.
        total_bandwidth: ``B``, the shared link capacity in bytes/s.
        server_speed: server throughput in FLOP/s.
        compression_ratio: uncompressed / compressed size of the uplink activations (gradients
            travel uncompressed); 1.0 means no compression.
        max_iters: cap on alternating rounds per start.
        objective: ``"epoch"`` or ``"iteration"``.
        step_batches: ``(steps, N)`` samples of each device in each global step of an epoch (the
            sampler's plan); required for the epoch objective, optional otherwise (then the plan's
            ``epoch_time`` is filled in).

    Returns:
        The best plan found; ``method == "edgesplit"``.

    Raises:
        ValueError: on invalid arguments or if some device fits no cut.
    """
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    table, epoch = _setting(costs, devices, total_bandwidth, server_speed, compression_ratio, step_batches,
                            objective)
    cuts, bandwidths, iterations = _iteration_search(table, total_bandwidth, max_iters)
    if objective == "epoch":
        assert epoch is not None
        common = [[int(j) + 1] * len(devices) for j in np.flatnonzero(table.feasible.all(axis=0))]
        cuts, bandwidths, _, iterations = _epoch_search.search(epoch, table.feasible, [cuts, *common], max_iters)
    return _plan(table, cuts, bandwidths, "edgesplit", iterations, epoch, objective)


def _iteration_search(table: CostTable, total_bandwidth: float, max_iters: int) -> tuple[list[int], np.ndarray, int]:
    """The per-iteration alternation from equal bandwidth and from every common cut."""
    n = table.feasible.shape[0]
    starts = [np.full(n, total_bandwidth / n)]
    for j in np.flatnonzero(table.feasible.all(axis=0)):
        starts.append(_equalised(table, [int(j) + 1] * n, total_bandwidth)[0])
    best: tuple[list[int], np.ndarray, float, int] | None = None
    for start in starts:
        result = _alternate(table, start, total_bandwidth, max_iters)
        if best is None or result[2] < best[2]:
            best = result
    assert best is not None
    return best[0], best[1], best[3]


def brute_force_plan(
    costs: BlockCosts,
    devices: Sequence[SplitDevice],
    total_bandwidth: float,
    server_speed: float,
    *,
    compression_ratio: float = 1.0,
    objective: Objective = "epoch",
    step_batches: ArrayLike | None = None,
) -> SplitPlan:
    """Exact optimum by enumerating every feasible cut tuple with its best bandwidth shares.

    Per-iteration objective: equalised bandwidth is min-max optimal for fixed cuts. Epoch
    objective: the convex share problem is solved for every tuple (to a relative tolerance of
    1e-7), visiting tuples by a lower bound and stopping once it passes the best. Cost grows as
    ``L ** N``: small instances only.

    Raises:
        ValueError: on invalid arguments, if some device fits no cut, or if there are more than
            2,000,000 (per-iteration) or 200,000 (epoch) feasible cut tuples.
    """
    table, epoch = _setting(costs, devices, total_bandwidth, server_speed, compression_ratio, step_batches,
                            objective)
    if objective == "epoch":
        assert epoch is not None
        cuts, bandwidths, _, _ = _epoch_search.brute_force(epoch, table.feasible, _MAX_BRUTE_FORCE_EPOCH_TUPLES)
        return _plan(table, cuts, bandwidths, "brute_force", 0, epoch, objective)
    options = [[int(j) + 1 for j in np.flatnonzero(row)] for row in table.feasible]
    count = math.prod(len(o) for o in options)
    if count > _MAX_BRUTE_FORCE_TUPLES:
        raise ValueError(
            f"brute force over {count} cut tuples exceeds the limit of {_MAX_BRUTE_FORCE_TUPLES}"
        )
    best: tuple[tuple[int, ...], np.ndarray, float] | None = None
    for cuts in itertools.product(*options):
        bandwidths, round_time = _equalised(table, cuts, total_bandwidth)
        if best is None or round_time < best[2]:
            best = (cuts, bandwidths, round_time)
    assert best is not None
    return _plan(table, best[0], best[1], "brute_force", 0, epoch, objective)


def uniform_cut_plan(
    costs: BlockCosts,
    devices: Sequence[SplitDevice],
    total_bandwidth: float,
    server_speed: float,
    cut: int,
    *,
    compression_ratio: float = 1.0,
    step_batches: ArrayLike | None = None,
) -> SplitPlan:
    """The same ``cut`` for every device and equal bandwidth ``B / N``.

    With ``step_batches`` the plan's ``epoch_time`` is filled in.

    Raises:
        ValueError: on invalid arguments, or if ``cut`` does not fit some device's memory.
    """
    if not isinstance(cut, int) or not 1 <= cut <= costs.num_blocks:
        raise ValueError(f"cut must be an int in 1..{costs.num_blocks}, got {cut!r}")
    table, epoch = _setting(costs, devices, total_bandwidth, server_speed, compression_ratio, step_batches,
                            "iteration")
    for i, dev in enumerate(devices):
        if not table.feasible[i, cut - 1]:
            need = costs.device_memory(cut, dev.batch_size)
            raise ValueError(
                f"cut {cut} does not fit device {dev.name or i!r} (index {i}): needs {need:.6g} bytes, "
                f"has {dev.memory:.6g}"
            )
    n = len(devices)
    return _plan(table, [cut] * n, np.full(n, total_bandwidth / n), f"uniform_cut_{cut}", 0, epoch)


def best_common_cut_plan(
    costs: BlockCosts,
    devices: Sequence[SplitDevice],
    total_bandwidth: float,
    server_speed: float,
    *,
    compression_ratio: float = 1.0,
    objective: Objective = "epoch",
    step_batches: ArrayLike | None = None,
) -> SplitPlan:
    """The single cut for all devices, with equal bandwidth ``B / N``, that is best for ``objective``.

    Raises:
        ValueError: on invalid arguments, or if no cut fits every device.
    """
    table, epoch = _setting(costs, devices, total_bandwidth, server_speed, compression_ratio, step_batches,
                            objective)
    common = [int(j) + 1 for j in np.flatnonzero(table.feasible.all(axis=0))]
    if not common:
        raise ValueError("no single cut fits the memory of every device; use plan_edgesplit")
    n = len(devices)
    equal = np.full(n, total_bandwidth / n)
    plans = [_plan(table, [c] * n, equal, "best_common_cut", 0, epoch, objective) for c in common]
    if objective == "epoch":
        return min(plans, key=lambda p: p.epoch_time)
    return min(plans, key=lambda p: p.round_time)
