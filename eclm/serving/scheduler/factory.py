"""Build a request scheduler by name."""

from __future__ import annotations

from eclm.serving.scheduler.amp4ec import Amp4ecScheduler
from eclm.serving.scheduler.base import RequestScheduler
from eclm.serving.scheduler.least_loaded import LeastLoadedScheduler
from eclm.serving.scheduler.round_robin import RoundRobinScheduler

SCHEDULERS: dict[str, type[RequestScheduler]] = {
    "amp4ec": Amp4ecScheduler,
    "round_robin": RoundRobinScheduler,
    "least_loaded": LeastLoadedScheduler,
}


def create_scheduler(
    name: str,
    *,
    seed: int = 0,
    max_load: float = 0.8,
    max_latency: float = 0.5,
    history_window: int = 50,
) -> RequestScheduler:
    """Instantiate the scheduler registered as ``name``.

    Args:
        name: One of ``SCHEDULERS`` (``"amp4ec"``, ``"round_robin"``, ``"least_loaded"``).
        seed: Tie-breaking seed (AMP4EC only).
        max_load: Load filter (AMP4EC only).
        max_latency: Latency filter in seconds (AMP4EC only).
        history_window: Execution times kept per node.

    Returns:
        The scheduler.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    if name == "amp4ec":
        return Amp4ecScheduler(max_load=max_load, max_latency=max_latency, seed=seed,
                               history_window=history_window)
    return SCHEDULERS[name](history_window=history_window)
