"""Replica placement inputs: each node's recent busy fraction and the scheduler's node states.

With ``placement="replicas"`` every node holds the whole model and a request scheduler picks the
node for each micro-batch. The scheduler sees :class:`~eclm.serving.scheduler.NodeState` values;
this module builds them from what the coordinator measured. A node's *load* is its busy fraction
over the last ``window_s`` seconds: node seconds of the micro-batches it finished in that window
divided by the window (clipped to 1), the emulated counterpart of AMP4EC's CPU utilisation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from eclm.serving.scheduler import NodeState

CPU_NEED = 0.1
"""Cores one request asks for in AMP4EC's resource score (its requests state a CPU need)."""


def busy_fraction(finished: deque[tuple[float, float]], now: float, window_s: float) -> float:
    """Fraction of the last ``window_s`` a node was busy; drops entries older than the window.

    Args:
        finished: ``(finish time, node seconds)`` of the node's micro-batches, oldest first
            (entries older than ``now - window_s`` are removed in place).
        now: Current time, same clock as the finish times.
        window_s: Window length, seconds (> 0).

    Returns:
        The busy fraction in [0, 1].

    Raises:
        ValueError: If ``window_s`` is not positive.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, got {window_s!r}")
    while finished and finished[0][0] < now - window_s:
        finished.popleft()
    return min(1.0, sum(seconds for _, seconds in finished) / window_s)


def replica_states(nodes: Sequence[int], cpu_shares: Sequence[float], memory: Sequence[float] | None,
                   loads: Sequence[float], need_bytes: float, latency_s: float) -> list[NodeState]:
    """Scheduler inputs for the replica nodes.

    Args:
        nodes: Replica node indices (the ``node_id`` of each state).
        cpu_shares: CPU share of every node (indexed by node).
        memory: Memory limit of every node in bytes, or ``None`` for unlimited.
        loads: Busy fraction of every node (indexed by node).
        need_bytes: Memory one request needs (model + largest activation), bytes.
        latency_s: Link latency to a node, seconds.

    Returns:
        One :class:`NodeState` per replica node, in ``nodes`` order (bookkeeping fields empty: the
        scheduler stamps its ledger on with ``with_bookkeeping``).
    """
    unlimited = 2.0**50
    return [NodeState(node, cpu_shares[node], unlimited if memory is None else memory[node], CPU_NEED,
                      max(need_bytes, 1.0), loads[node], latency_s) for node in nodes]
