"""The planner's choice of micro-batch size (``micro_batch_policy="auto"``).

Every micro-batch pays costs that do not grow with its size: each stage's entry (cold caches
after idling, the stage overhead of the profile), each link's latency, and on a real deployment
one remote call per stage. Larger micro-batches amortise them, so the pipeline's rate grows with
the size, while a request's latency grows too (it waits for the whole micro-batch at every
stage). The deployment profiles the nodes at every candidate size (powers of two up to
``micro_batch_size``, and that cap), plans each, and this module picks the size with the highest
predicted rate whose predicted unloaded latency meets ``latency_slo_s``; sizes within 1% of the
best rate count as equal and the smallest of them wins (same rate, lower latency).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from eclm.serving.partition_problem import PartitionPlan

_EQUAL_RATE = 0.01


def candidate_sizes(cap: int) -> tuple[int, ...]:
    """Powers of two below ``cap``, and ``cap`` itself (e.g. 6 -> (1, 2, 4, 6)).

    Raises:
        ValueError: If ``cap`` is not an int >= 1.
    """
    if not (isinstance(cap, int) and cap >= 1):
        raise ValueError(f"cap must be an int >= 1, got {cap!r}")
    sizes = [1 << k for k in range(cap.bit_length()) if (1 << k) < cap]
    return (*sizes, cap)


@dataclass(frozen=True)
class MicroBatchChoice:
    """Outcome of :func:`choose_micro_batch`.

    Attributes:
        size: The chosen micro-batch size.
        rates: Predicted requests/s per candidate size.
        latencies: Predicted unloaded seconds per micro-batch, per candidate size.
        reason: Why this size (for logs).
    """

    size: int
    rates: dict[int, float]
    latencies: dict[int, float]
    reason: str


def choose_micro_batch(plans: Mapping[int, PartitionPlan], latency_slo_s: float | None = None) -> MicroBatchChoice:
    """Pick a micro-batch size from the plans made for each candidate size.

    Args:
        plans: ``{size: plan}``; each plan was made on the problem profiled at that size.
        latency_slo_s: Largest acceptable predicted latency of one micro-batch through the idle
            pipeline, seconds (``None``: no limit). If no size meets it, the fastest-latency
            size is taken.

    Returns:
        The :class:`MicroBatchChoice`.

    Raises:
        ValueError: If ``plans`` is empty or a size is not a positive int.
    """
    if not plans:
        raise ValueError("need at least one candidate micro-batch size")
    for size in plans:
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"micro-batch sizes must be ints >= 1, got {size!r}")
    rates = {b: (math.inf if p.bottleneck == 0 else b / p.bottleneck) for b, p in sorted(plans.items())}
    latencies = {b: p.latency for b, p in sorted(plans.items())}
    allowed = [b for b in rates if latency_slo_s is None or latencies[b] <= latency_slo_s]
    if not allowed:
        size = min(latencies, key=lambda b: (latencies[b], b))
        return MicroBatchChoice(size, rates, latencies, f"no size meets the {latency_slo_s} s latency objective; "
                                "took the lowest-latency one")
    best = max(rates[b] for b in allowed)
    size = min(b for b in allowed if rates[b] >= (1.0 - _EQUAL_RATE) * best)
    return MicroBatchChoice(size, rates, latencies, f"highest predicted rate ({rates[size]:.1f} req/s)"
                            + ("" if latency_slo_s is None else f" within {latency_slo_s} s"))
