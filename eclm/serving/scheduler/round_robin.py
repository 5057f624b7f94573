"""Round-robin request scheduling (baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eclm.serving.scheduler.base import NodeState, RequestScheduler


class RoundRobinScheduler(RequestScheduler):
    """Cycle through candidate positions 0, 1, ..., n-1, 0, ... ignoring node state.

    The cursor counts decisions, so if the candidate list changes length the cycle continues
    modulo the new length. No filters: every node qualifies, so ``choose`` never returns ``None``.
    """

    def __init__(self, history_window: int = 50) -> None:
        super().__init__(history_window)
        self._cursor = 0

    def _choose(self, candidates: Sequence[NodeState], request: Any) -> int:
        index = self._cursor % len(candidates)
        self._cursor += 1
        return index
