"""Least-loaded request scheduling (baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eclm.serving.scheduler.base import NodeState, RequestScheduler


class LeastLoadedScheduler(RequestScheduler):
    """Pick the node with the lowest ``load``; ties go to fewer tasks in flight, then lower index.

    No filters: every node qualifies, so ``choose`` never returns ``None``.
    """

    def _choose(self, candidates: Sequence[NodeState], request: Any) -> int:
        return min(range(len(candidates)), key=lambda i: (candidates[i].load, candidates[i].task_count, i))
