"""Bounded search for the harmful updates of a failing merge: adaptive group testing.

When the merge of all ``k`` updates fails validation, the updates are bisected: a half is merged
together with the updates cleared so far and validated as one candidate; a half that passes is
cleared as a whole, a half that fails is split again, down to single updates, which are then
excluded as harmful. Sets already known to fail (the full set, a failing half) are never
validated twice. One harmful update among ``k`` costs at most about ``log2(k) + 1`` candidates,
``d`` of them about ``2 d log2(k / d)`` (binary splitting, Hwang 1972); leave-one-out ranking
cost ``k``. The search stops after ``budget`` candidates: the updates it has not cleared by then
are excluded (a bounded merge prefers losing an honest contribution to an unbounded cost).
Method description: docs/security.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: ``test(items) -> (failure or None, payload)``: validate the merge of ``items`` (one candidate).
GroupTest = Callable[[list[T]], tuple[str | None, Any]]


def search_budget(k: int, per_log2: float) -> int:
    """Candidate validations allowed for ``k`` updates: ``ceil(per_log2 x log2(k))`` (at least 1).

    Args:
        k: Updates whose merge failed.
        per_log2: Candidates per factor 2 of updates (``merge.search_budget``).
    """
    return max(1, math.ceil(per_log2 * math.log2(max(k, 2))))


@dataclass
class SearchResult(Generic[T]):
    """Outcome of :func:`isolate_harmful`.

    Attributes:
        kept: The cleared updates, in input order: exactly the set of the last passing candidate.
        payload: What ``test`` returned with that candidate (``None`` when nothing was cleared).
        harmful: Per excluded update's index, the failure of the smallest failing set holding it.
        unchecked: Indices left uncleared when the budget ran out.
        candidates: Candidates validated (at most the budget).
    """

    kept: list[T] = field(default_factory=list)
    payload: Any = None
    harmful: dict[int, str] = field(default_factory=dict)
    unchecked: list[int] = field(default_factory=list)
    candidates: int = 0


def isolate_harmful(items: Sequence[T], test: GroupTest, failure: str, budget: int) -> SearchResult[T]:
    """Clear as many of ``items`` as validation allows, by bisection, within ``budget`` candidates.

    Args:
        items: The updates whose merge failed (at least one).
        test: Validates the merge of a subset (in input order); one call is one candidate.
        failure: Why the merge of all ``items`` failed (it is not validated again).
        budget: At most this many calls of ``test``.

    Returns:
        The cleared subset, the excluded updates with reasons, and the candidates spent.
    """
    search = _Bisection(list(items), test, budget)
    search.known[frozenset(range(len(items)))] = failure
    search.clear(list(range(len(items))))
    result = search.result
    result.kept = [items[i] for i in search.kept]
    return result


class _Bisection(Generic[T]):
    def __init__(self, items: list[T], test: GroupTest, budget: int) -> None:
        self.items, self.test, self.budget = items, test, budget
        self.kept: list[int] = []
        self.known: dict[frozenset[int], str] = {}  # sets known to fail, with why
        self.result: SearchResult[T] = SearchResult()

    def clear(self, group: list[int]) -> None:
        """Add what of ``group`` can join the cleared updates; exclude the rest."""
        trial = frozenset(self.kept) | frozenset(group)
        failure = self.known.get(trial)
        if failure is None:
            if self.result.candidates >= self.budget:
                self.result.unchecked += group
                return
            self.result.candidates += 1
            failure, payload = self.test([self.items[i] for i in sorted(trial)])
            if failure is None:
                self.kept, self.result.payload = sorted(trial), payload
                return
            self.known[trial] = failure
        if len(group) == 1:
            self.result.harmful[group[0]] = failure
            return
        half = len(group) // 2
        self.clear(group[:half])
        self.clear(group[half:])


__all__ = ["GroupTest", "SearchResult", "isolate_harmful", "search_budget"]
