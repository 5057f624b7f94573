"""AMP4EC's node-scoring request scheduler (Zhang et al., arXiv 2504.00407; docs/serving.md).

Filter, then score. A node is skipped if its load exceeds ``max_load`` (0.8), its latency exceeds
``max_latency``, or it has less CPU or memory available than a request needs. Remaining nodes get

    S   = 0.2 * S_R + 0.2 * S_L + 0.1 * S_P + 0.5 * S_B
    S_R = 0.5 * cpu_avail / cpu_need + 0.5 * mem_avail / mem_need     (resources; not capped at 1)
    S_L = 1 - load                                                    (load)
    S_P = 1 / (1 + mean exec time in s), 0.5 without history          (performance)
    S_B = 1 / (1 + 2 * task_count)                                    (balance)

and the highest score wins. Ties: AMP4EC adds a small random jitter to every score; an additive
jitter can also reorder nodes whose scores differ by less than the jitter, so here the winner is
drawn uniformly (with a seeded generator) among the nodes within ``tie_tolerance`` of the best
score, which breaks exactly the ties and nothing else.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eclm.serving.scheduler.base import NodeState, RequestScheduler

W_RESOURCES, W_LOAD, W_PERFORMANCE, W_BALANCE = 0.2, 0.2, 0.1, 0.5
NO_HISTORY_PERFORMANCE = 0.5


@dataclass(frozen=True)
class Amp4ecScore:
    """The terms of AMP4EC's score for one node (all dimensionless)."""

    resources: float
    load: float
    performance: float
    balance: float

    @property
    def total(self) -> float:
        return (W_RESOURCES * self.resources + W_LOAD * self.load
                + W_PERFORMANCE * self.performance + W_BALANCE * self.balance)


class Amp4ecScheduler(RequestScheduler):
    """Filter-then-score scheduler of AMP4EC.

    Args:
        max_load: Nodes with ``load > max_load`` are skipped, in (0, 1].
        max_latency: Nodes with ``latency > max_latency`` (seconds) are skipped, > 0.
        seed: Seed of the generator that breaks score ties.
        tie_tolerance: Scores within this absolute distance of the best count as tied, >= 0.
        history_window: See :class:`RequestScheduler`.

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        max_load: float = 0.8,
        max_latency: float = 0.5,
        seed: int = 0,
        tie_tolerance: float = 1e-9,
        history_window: int = 50,
    ) -> None:
        super().__init__(history_window)
        if not 0.0 < max_load <= 1.0:
            raise ValueError(f"max_load must be in (0, 1], got {max_load!r}")
        if not max_latency > 0:
            raise ValueError(f"max_latency must be > 0 seconds, got {max_latency!r}")
        if not (tie_tolerance >= 0 and math.isfinite(tie_tolerance)):
            raise ValueError(f"tie_tolerance must be a finite number >= 0, got {tie_tolerance!r}")
        self.max_load = max_load
        self.max_latency = max_latency
        self.tie_tolerance = tie_tolerance
        self._rng = random.Random(seed)

    def rejection_reason(self, state: NodeState) -> str | None:
        """Why ``state`` is filtered out, or ``None`` if it qualifies."""
        if state.load > self.max_load:
            return f"load {state.load:.2f} > {self.max_load}"
        if state.latency > self.max_latency:
            return f"latency {state.latency:.3f}s > {self.max_latency}s"
        if state.cpu_avail < state.cpu_need:
            return f"cpu_avail {state.cpu_avail} < cpu_need {state.cpu_need}"
        if state.mem_avail < state.mem_need:
            return f"mem_avail {state.mem_avail} < mem_need {state.mem_need}"
        return None

    @staticmethod
    def score(state: NodeState) -> Amp4ecScore:
        """AMP4EC's score terms for ``state`` (call ``.total`` for S)."""
        mean = state.mean_exec_time
        return Amp4ecScore(
            resources=0.5 * state.cpu_avail / state.cpu_need + 0.5 * state.mem_avail / state.mem_need,
            load=1.0 - state.load,
            performance=NO_HISTORY_PERFORMANCE if mean is None else 1.0 / (1.0 + mean),
            balance=1.0 / (1.0 + 2.0 * state.task_count),
        )

    def _choose(self, candidates: Sequence[NodeState], request: Any) -> int | None:
        scored = [(i, self.score(c).total) for i, c in enumerate(candidates) if self.rejection_reason(c) is None]
        if not scored:
            return None
        top = max(s for _, s in scored)
        tied = [i for i, s in scored if s >= top - self.tie_tolerance]
        # Draw only when there is a tie, so the generator's sequence depends on ties alone.
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)
