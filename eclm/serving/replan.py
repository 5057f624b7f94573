"""Decide whether to re-partition after the nodes changed.

AMP4EC re-partitions "when resources change"; done naively this thrashes (every re-deploy moves
weights and drains the pipeline). The decision here re-costs the *current* plan on the *updated*
problem and switches only if the optimal plan is better by a relative margin. It returns a value;
the coordinator carries it out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from eclm.serving.partition import Objective, _check_objective, dp_partition
from eclm.serving.partition_problem import PartitionPlan, PartitionProblem, evaluate_plan


@dataclass(frozen=True)
class RepartitionDecision:
    """Outcome of :func:`decide_repartition`.

    Attributes:
        switch: Whether to deploy ``plan`` in place of the current one.
        plan: The plan to run from now on: the new optimum if ``switch``, else the current plan
            re-costed on the updated problem.
        current_cost: Objective value of the current plan on the updated problem, seconds
            (``inf`` if it no longer fits memory).
        best_cost: Objective value of the optimal plan on the updated problem, seconds.
        reason: Human-readable explanation for logs.
    """

    switch: bool
    plan: PartitionPlan
    current_cost: float
    best_cost: float
    reason: str


def _cost(plan: PartitionPlan, objective: Objective) -> float:
    if not plan.fits_memory:
        return math.inf
    return plan.bottleneck if objective == "throughput" else plan.latency


def decide_repartition(
    problem: PartitionProblem,
    current: PartitionPlan,
    objective: Objective = "throughput",
    min_gain: float = 0.1,
    tolerance: float = 0.0,
) -> RepartitionDecision:
    """Compare the running plan with the optimum on the updated problem.

    Args:
        problem: The problem rebuilt from the monitor's latest numbers (same nodes and blocks as
            the one ``current`` was made for).
        current: The plan currently deployed.
        objective: ``"throughput"`` (compare bottlenecks) or ``"latency"``.
        min_gain: Switch only if the optimum's cost is at least this fraction lower, in [0, 1).
            A current plan that no longer fits memory is always replaced.
        tolerance: Passed to :func:`~eclm.serving.partition.dp_partition`.

    Returns:
        The :class:`RepartitionDecision`.

    Raises:
        ValueError: If ``min_gain`` is out of range, ``current`` does not match the problem's
            shape, or no plan fits memory.
    """
    _check_objective(objective)
    if not 0.0 <= min_gain < 1.0:
        raise ValueError(f"min_gain must be in [0, 1), got {min_gain!r}")
    if len(current.boundaries) != problem.n_nodes + 1 or current.boundaries[-1] != problem.n_blocks:
        raise ValueError(
            f"current plan has boundaries {list(current.boundaries)}, which do not match a problem of "
            f"{problem.n_nodes} nodes x {problem.n_blocks} blocks"
        )
    recosted = evaluate_plan(problem, current.boundaries, current.method)
    best = dp_partition(problem, objective, tolerance)
    current_cost, best_cost = _cost(recosted, objective), _cost(best, objective)
    if best.boundaries == recosted.boundaries:
        return RepartitionDecision(False, recosted, current_cost, best_cost, "current plan is still optimal")
    if not recosted.fits_memory:
        return RepartitionDecision(True, best, current_cost, best_cost, "current plan no longer fits memory")
    if best_cost <= (1.0 - min_gain) * current_cost:
        gain = 1.0 - best_cost / current_cost if current_cost > 0 else 0.0
        return RepartitionDecision(True, best, current_cost, best_cost, f"{objective} cost improves by {gain:.1%}")
    return RepartitionDecision(
        False, recosted, current_cost, best_cost, f"gain below min_gain={min_gain:.0%}; keeping current plan"
    )
