"""Request scheduling: which node (or pipeline replica) serves the next request.

A scheduler is a policy object: :meth:`RequestScheduler.choose` looks at hand-built or monitored
:class:`NodeState` values and returns an index (a decision value); the coordinator dispatches the
request and reports back through :meth:`~RequestScheduler.on_start` /
:meth:`~RequestScheduler.on_finish`. The scheduler keeps that bookkeeping (tasks in flight,
recent execution times) in a ledger and can stamp it onto fresh states with
:meth:`~RequestScheduler.with_bookkeeping`.

No-eligible-node policy: :meth:`choose` returns ``None`` when no candidate qualifies (the caller
queues, retries or rejects the request); :meth:`require` raises :class:`NoEligibleNodeError`
instead for callers that treat it as a failure. An empty candidate list is a programming error and
raises ``ValueError``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


class NoEligibleNodeError(RuntimeError):
    """No candidate node passed the scheduler's eligibility filters."""


@dataclass(frozen=True)
class NodeState:
    """What a scheduler knows about one candidate node.

    Attributes:
        node_id: Identifier used for bookkeeping (e.g. the node name or index).
        cpu_avail: CPU the node can give now, cores.
        mem_avail: Memory the node can give now, bytes.
        cpu_need: CPU one request needs, cores (> 0).
        mem_need: Memory one request needs, bytes (> 0).
        load: Current utilisation in [0, 1].
        latency: Network latency to the node, seconds.
        exec_history: Recent execution times of requests on this node, seconds.
        task_count: Requests currently running on the node.
    """

    node_id: Hashable
    cpu_avail: float
    mem_avail: float
    cpu_need: float
    mem_need: float
    load: float = 0.0
    latency: float = 0.0
    exec_history: tuple[float, ...] = field(default_factory=tuple)
    task_count: int = 0

    def __post_init__(self) -> None:
        for name in ("cpu_avail", "mem_avail", "latency"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"NodeState.{name} must be a finite number >= 0, got {value!r}")
        for name in ("cpu_need", "mem_need"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"NodeState.{name} must be a positive finite number, got {value!r}")
        if not 0.0 <= self.load <= 1.0:
            raise ValueError(f"NodeState.load must be in [0, 1], got {self.load!r}")
        if not (isinstance(self.task_count, int) and self.task_count >= 0):
            raise ValueError(f"NodeState.task_count must be an int >= 0, got {self.task_count!r}")
        object.__setattr__(self, "exec_history", tuple(float(t) for t in self.exec_history))
        if any(not (t >= 0 and math.isfinite(t)) for t in self.exec_history):
            raise ValueError(f"NodeState.exec_history must hold finite seconds >= 0, got {self.exec_history}")

    @property
    def mean_exec_time(self) -> float | None:
        """Mean of ``exec_history`` in seconds, or ``None`` without history."""
        return sum(self.exec_history) / len(self.exec_history) if self.exec_history else None


@dataclass
class _LedgerEntry:
    in_flight: int = 0
    history: deque = field(default_factory=deque)


class RequestScheduler(ABC):
    """Base class of request-scheduling policies.

    Args:
        history_window: How many recent execution times the ledger keeps per node (>= 1).

    Raises:
        ValueError: If ``history_window`` < 1.
    """

    def __init__(self, history_window: int = 50) -> None:
        if not (isinstance(history_window, int) and history_window >= 1):
            raise ValueError(f"history_window must be an int >= 1, got {history_window!r}")
        self.history_window = history_window
        self._ledger: dict[Hashable, _LedgerEntry] = {}

    @abstractmethod
    def _choose(self, candidates: Sequence[NodeState], request: Any) -> int | None:
        """Policy proper; ``candidates`` is non-empty."""

    def choose(self, candidates: Sequence[NodeState], request: Any = None) -> int | None:
        """Pick the candidate that should serve ``request``.

        Args:
            candidates: Non-empty list of node states.
            request: The request (policies here ignore it; kept for content-aware policies).

        Returns:
            Index into ``candidates``, or ``None`` if no candidate qualifies.

        Raises:
            ValueError: If ``candidates`` is empty.
            TypeError: If a candidate is not a :class:`NodeState`.
        """
        if len(candidates) == 0:
            raise ValueError("candidates must hold at least one NodeState")
        for i, c in enumerate(candidates):
            if not isinstance(c, NodeState):
                raise TypeError(f"candidates[{i}] must be NodeState, got {type(c).__name__}")
        return self._choose(candidates, request)

    def require(self, candidates: Sequence[NodeState], request: Any = None) -> int:
        """Like :meth:`choose` but raise when no candidate qualifies.

        Raises:
            NoEligibleNodeError: If no candidate qualifies.
            ValueError: If ``candidates`` is empty.
        """
        index = self.choose(candidates, request)
        if index is None:
            ids = [c.node_id for c in candidates]
            raise NoEligibleNodeError(f"{type(self).__name__}: no eligible node among {ids}")
        return index

    # ------------------------------------------------------------------ bookkeeping
    def on_start(self, node_id: Hashable) -> None:
        """Record that a request was dispatched to ``node_id``."""
        self._ledger.setdefault(node_id, _LedgerEntry()).in_flight += 1

    def on_finish(self, node_id: Hashable, exec_seconds: float) -> None:
        """Record that a request on ``node_id`` finished after ``exec_seconds``.

        Raises:
            ValueError: If ``exec_seconds`` is negative / not finite or nothing was in flight there.
        """
        if not (exec_seconds >= 0 and math.isfinite(exec_seconds)):
            raise ValueError(f"exec_seconds must be a finite duration >= 0, got {exec_seconds!r}")
        entry = self._ledger.get(node_id)
        if entry is None or entry.in_flight == 0:
            raise ValueError(f"on_finish({node_id!r}) without a matching on_start")
        entry.in_flight -= 1
        entry.history.append(float(exec_seconds))
        while len(entry.history) > self.history_window:
            entry.history.popleft()

    def task_count(self, node_id: Hashable) -> int:
        """Requests in flight on ``node_id`` according to the ledger."""
        entry = self._ledger.get(node_id)
        return 0 if entry is None else entry.in_flight

    def exec_history(self, node_id: Hashable) -> tuple[float, ...]:
        """Recent execution times on ``node_id`` according to the ledger, oldest first."""
        entry = self._ledger.get(node_id)
        return () if entry is None else tuple(entry.history)

    def with_bookkeeping(self, states: Sequence[NodeState]) -> list[NodeState]:
        """Copies of ``states`` whose ``task_count`` and ``exec_history`` come from the ledger."""
        return [replace(s, task_count=self.task_count(s.node_id), exec_history=self.exec_history(s.node_id))
                for s in states]
