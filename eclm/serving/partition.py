"""Partitioners: split a chain of blocks into contiguous stages over an ordered list of nodes.

* :func:`dp_partition` - eclm's partitioner: optimal contiguous partition by dynamic programming
  over block boundaries, for pipelined throughput (min bottleneck) or single-request latency.
* :func:`proportional_partition` - AMP4EC's partitioner: runs of blocks proportional to CPU share.
* :func:`monolithic_plan` - everything on one node (the baseline AMP4EC is compared with).
* :func:`brute_force_partition` - exhaustive search, the reference the DP is tested against.

All of them cost plans with :func:`~eclm.serving.partition_problem.evaluate_plan`, so the numbers
they report are comparable. The cost model is documented in :mod:`eclm.serving.partition_problem`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

from eclm.serving.partition_problem import PartitionPlan, PartitionProblem, evaluate_plan

Objective = Literal["throughput", "latency"]
OBJECTIVES: tuple[str, ...] = ("throughput", "latency")

# Relative slack when re-using an optimal bottleneck as a cap: sums taken in a different order
# differ in the last bits, and an exact cap would then reject the optimum itself.
_CAP_SLACK = 1e-9
_BRUTE_FORCE_LIMIT = 200_000


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _infeasible(problem: PartitionProblem) -> ValueError:
    need = max(problem.block_memory)
    return ValueError(
        "no feasible partition: the blocks cannot be placed within node_memory "
        f"(total block memory {sum(problem.block_memory):.0f} B, largest block {need:.0f} B, "
        f"node_memory {list(problem.node_memory)})"
    )


def _counts_to_boundaries(counts: Sequence[int]) -> tuple[int, ...]:
    return tuple(itertools.accumulate(counts, initial=0))


def _solve(problem: PartitionProblem, combine: str, cap: float) -> tuple[int, ...] | None:
    """DP over (node, first block) states; returns boundaries of an optimal plan or ``None``.

    ``best[i][k]`` is the optimal cost of running blocks ``k..N-1`` when node ``i`` is active and
    starts at block ``k`` (only nodes after ``i`` may follow). A stage's pipeline step (what
    ``cap`` bounds and ``max`` combines) is compute + transfer, or their maximum when transfers
    overlap compute; its latency (what ``+`` combines) is always compute + transfer. Both objectives combine a stage's
    cost with the rest monotonically (``max`` or ``+``), so optimal sub-solutions compose into an
    optimal solution. Any step costing more than ``cap`` is forbidden, which lets the throughput
    objective run a second pass minimising latency among min-bottleneck plans.
    """
    n, N = problem.n_nodes, problem.n_blocks
    join = max if combine == "max" else (lambda a, b: a + b)
    prefix = [list(itertools.accumulate(row, initial=0.0)) for row in problem.block_latency]
    mem_prefix = list(itertools.accumulate(problem.block_memory, initial=0.0))
    # transfer[i][j][e]: precomputed because a chain transfer sums over hops.
    transfer = [[[problem.transfer_time(i, j, problem.cut_bytes(e)) if j > i else math.inf
                  for e in range(N + 1)] for j in range(n)] for i in range(n)]
    best = [[math.inf] * N for _ in range(n)]
    choice: list[list[tuple[int, int | None]]] = [[(N, None)] * N for _ in range(n)]
    for i in reversed(range(n)):
        for k in reversed(range(N)):
            for e in range(k + 1, N + 1):
                if mem_prefix[e] - mem_prefix[k] > problem.node_memory[i]:
                    break  # block memory is non-negative: longer runs only need more
                compute = prefix[i][e] - prefix[i][k] + problem.stage_overhead[i]
                if e == N:
                    if compute <= cap and compute < best[i][k]:
                        best[i][k], choice[i][k] = compute, (e, None)
                    continue
                for j in range(i + 1, n):
                    tr = transfer[i][j][e]
                    step = max(compute, tr) if problem.overlap_transfers else compute + tr
                    if step > cap or best[j][e] == math.inf:
                        continue
                    value = join(step if combine == "max" else compute + tr, best[j][e])
                    if value < best[i][k]:
                        best[i][k], choice[i][k] = value, (e, j)
    top, first = math.inf, None
    for a in range(n):
        ingress = problem.transfer_time(0, a, problem.cut_bytes(0))
        if ingress > cap or best[a][0] == math.inf:
            continue
        value = join(ingress, best[a][0])
        if value < top:
            top, first = value, a
    if first is None:
        return None
    counts = [0] * n
    node, k = first, 0
    while node is not None:
        e, nxt = choice[node][k]
        counts[node] = e - k
        node, k = nxt, e
    return _counts_to_boundaries(counts)


def dp_partition(problem: PartitionProblem, objective: Objective = "throughput",
                 tolerance: float = 0.0) -> PartitionPlan:
    """Optimal contiguous partition of the block chain over the ordered nodes.

    ``"throughput"`` minimises the pipeline bottleneck (max over ingress and stages of their
    steps) and, among plans within ``tolerance`` of it, the end-to-end latency. ``"latency"``
    minimises ingress + sum of stage costs. Memory limits are hard constraints. Runs in
    ``O(n_nodes^2 * n_blocks^2)``.

    Args:
        problem: The partitioning problem.
        objective: ``"throughput"`` or ``"latency"``.
        tolerance: Throughput only: relative slack on the optimal bottleneck within which the
            lowest-latency plan is taken, in [0, 1). Profiled costs are noisy by a few percent;
            among plans that close, the one with fewer hops and less transfer is the safer bet.

    Returns:
        The optimal :class:`PartitionPlan` (``method`` is ``"dp-<objective>"``).

    Raises:
        ValueError: If ``objective`` is unknown or no partition fits the memory limits.
    """
    _check_objective(objective)
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    if objective == "latency":
        bounds = _solve(problem, "sum", math.inf)
    else:
        first = _solve(problem, "max", math.inf)
        if first is None:
            raise _infeasible(problem)
        cap = evaluate_plan(problem, first).bottleneck * (1 + tolerance + _CAP_SLACK)
        bounds = _solve(problem, "sum", cap) or first
    if bounds is None:
        raise _infeasible(problem)
    return evaluate_plan(problem, bounds, f"dp-{objective}")


def brute_force_partition(problem: PartitionProblem, objective: Objective = "throughput",
                          tolerance: float = 0.0) -> PartitionPlan:
    """Exhaustive search over all contiguous partitions; the reference for testing the DP.

    Same objective (and throughput tie-break on latency within ``tolerance``) as :func:`dp_partition`.

    Args:
        problem: The partitioning problem (``C(n_blocks + n_nodes - 1, n_nodes - 1)`` plans
            are enumerated, at most 200 000).
        objective: ``"throughput"`` or ``"latency"``.
        tolerance: See :func:`dp_partition`.

    Returns:
        An optimal :class:`PartitionPlan` (``method`` is ``"brute-force-<objective>"``).

    Raises:
        ValueError: If ``objective`` is unknown, the instance is too large, or nothing fits memory.
    """
    _check_objective(objective)
    n, N = problem.n_nodes, problem.n_blocks
    if math.comb(N + n - 1, n - 1) > _BRUTE_FORCE_LIMIT:
        raise ValueError(f"brute force over {n} nodes x {N} blocks is too large; use dp_partition")
    plans = [
        evaluate_plan(problem, (0, *cuts, N), f"brute-force-{objective}")
        for cuts in itertools.combinations_with_replacement(range(N + 1), n - 1)
    ]
    plans = [p for p in plans if p.fits_memory]
    if not plans:
        raise _infeasible(problem)
    if objective == "latency":
        return min(plans, key=lambda p: p.latency)
    cap = min(p.bottleneck for p in plans) * (1 + tolerance + _CAP_SLACK)
    return min((p for p in plans if p.bottleneck <= cap), key=lambda p: p.latency)


def proportional_partition(problem: PartitionProblem, cpu_shares: Sequence[float]) -> PartitionPlan:
    """AMP4EC's partitioner: contiguous runs of blocks proportional to each node's CPU share.

    Block counts are ``n_blocks * share / sum(shares)`` rounded by the largest-remainder method
    (so they sum to ``n_blocks``; equal remainders favour earlier nodes). Memory is not
    considered, as in AMP4EC; check ``plan.fits_memory``.

    Args:
        problem: The partitioning problem.
        cpu_shares: ``[n_nodes]`` CPU shares (> 0), in the problem's node order.

    Returns:
        The :class:`PartitionPlan` (``method`` is ``"proportional"``).

    Raises:
        ValueError: If ``cpu_shares`` has the wrong length or a non-positive entry.
    """
    n, N = problem.n_nodes, problem.n_blocks
    if len(cpu_shares) != n:
        raise ValueError(f"cpu_shares must have {n} entries (one per node), got {len(cpu_shares)}")
    for i, s in enumerate(cpu_shares):
        if not (s > 0 and math.isfinite(s)):
            raise ValueError(f"cpu_shares[{i}] must be a positive finite number, got {s!r}")
    total = math.fsum(cpu_shares)
    quotas = [N * s / total for s in cpu_shares]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(n), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: N - sum(counts)]:
        counts[i] += 1
    return evaluate_plan(problem, _counts_to_boundaries(counts), "proportional")


def monolithic_plan(problem: PartitionProblem, node: int = 0) -> PartitionPlan:
    """All blocks on one node (input is first moved there from node 0 if ``node > 0``).

    Args:
        problem: The partitioning problem.
        node: Index of the node that runs the whole model.

    Returns:
        The :class:`PartitionPlan` (``method`` is ``"monolithic"``); check ``plan.fits_memory``.

    Raises:
        ValueError: If ``node`` is out of range.
    """
    if not (isinstance(node, int) and 0 <= node < problem.n_nodes):
        raise ValueError(f"node must be an index in [0, {problem.n_nodes}), got {node!r}")
    counts = [0] * problem.n_nodes
    counts[node] = problem.n_blocks
    return evaluate_plan(problem, _counts_to_boundaries(counts), "monolithic")
