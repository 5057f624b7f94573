"""Searching cuts for the epoch objective: alternation, local search and exact enumeration.

The epoch time couples the devices' cuts (a deep cut enlarges the exchange every device waits for,
server time adds up over devices, every step waits for its slowest device), so a device's best cut
is no longer its own business as in the per-iteration model. :func:`search` keeps EdgeSplit's
alternation — (a) with the shares fixed, move each device to its best cut in turn; (b) with the
cuts fixed, the optimal shares (:func:`eclm.split._bandwidth.optimal_shares`) — from several
starts, then polishes the best result by moving one device's cut at a time with the shares
re-optimised for every candidate. :func:`brute_force` enumerates every cut tuple, visiting them in
order of a lower bound (each device alone on the whole pool) and stopping once the bound passes
the best found: exact, to the share solver's tolerance.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from eclm.split._epoch_model import EpochCostModel

__all__ = ["alternate", "brute_force", "polish", "search"]

Result = tuple[np.ndarray, np.ndarray, float, int]  # cuts (N,), shares (N,), epoch seconds, iterations

_CHUNK = 2048  # cut tuples solved together (memory: chunk x 2 x distinct steps x N floats)
_PROGRESS = 1e-9  # relative improvement that counts as progress (solver noise is below it)


def _solve_one(model: EpochCostModel, cuts: np.ndarray) -> tuple[float, np.ndarray]:
    values, shares = model.solve(cuts[None])
    return float(values[0]), shares[0]


def _best_cuts_for_shares(model: EpochCostModel, feasible: np.ndarray, cuts: np.ndarray,
                          shares: np.ndarray) -> np.ndarray:
    """Step (a): with the shares fixed, move one device at a time to its best feasible cut."""
    cuts = cuts.copy()
    current = float(model.seconds(cuts[None], shares[None])[0])
    for _ in range(feasible.size):  # every accepted move lowers the time: at most this many sweeps
        moved = False
        for k in range(model.num_devices):
            options = np.flatnonzero(feasible[k]) + 1
            candidates = np.repeat(cuts[None], options.size, axis=0)
            candidates[:, k] = options
            values = model.seconds(candidates, np.repeat(shares[None], options.size, axis=0))
            i = int(np.argmin(values))
            if values[i] < current * (1 - _PROGRESS):
                cuts, current, moved = candidates[i], float(values[i]), True
        if not moved:
            break
    return cuts


def alternate(model: EpochCostModel, feasible: np.ndarray, start: np.ndarray, max_iters: int) -> Result:
    """EdgeSplit's alternation on the epoch objective from the cut tuple ``start``."""
    value, shares = _solve_one(model, start)
    cuts, used = start, 1
    for iteration in range(2, max_iters + 1):
        candidate = _best_cuts_for_shares(model, feasible, cuts, shares)
        if np.array_equal(candidate, cuts):
            break
        new_value, new_shares = _solve_one(model, candidate)
        if new_value >= value * (1 - _PROGRESS):
            break
        cuts, value, shares, used = candidate, new_value, new_shares, iteration
    return cuts, shares, value, used


def polish(model: EpochCostModel, feasible: np.ndarray, result: Result) -> Result:
    """Move one device's cut at a time, re-optimising the shares for every candidate, while it helps."""
    cuts, shares, value, iterations = result
    while True:
        moves = [(k, c) for k in range(model.num_devices) for c in np.flatnonzero(feasible[k]) + 1
                 if c != cuts[k]]
        if not moves:
            return cuts, shares, value, iterations
        candidates = np.repeat(cuts[None], len(moves), axis=0)
        for i, (k, c) in enumerate(moves):
            candidates[i, k] = c
        values, all_shares = model.solve(candidates)
        i = int(np.argmin(values))
        if values[i] >= value * (1 - _PROGRESS):
            return cuts, shares, value, iterations
        cuts, shares, value = candidates[i], all_shares[i], float(values[i])


def search(model: EpochCostModel, feasible: np.ndarray, starts: Sequence[Sequence[int]], max_iters: int) -> Result:
    """Alternate from every start, keep the best, polish it."""
    results = [alternate(model, feasible, np.asarray(s, dtype=np.int64), max_iters)
               for s in dict.fromkeys(tuple(int(c) for c in s) for s in starts)]
    return polish(model, feasible, min(results, key=lambda r: r[2]))


def brute_force(model: EpochCostModel, feasible: np.ndarray, limit: int) -> Result:
    """The optimum over every feasible cut tuple, with optimal shares for each.

    Raises:
        ValueError: If there are more than ``limit`` feasible cut tuples.
    """
    options = [np.flatnonzero(row) + 1 for row in feasible]
    count = math.prod(len(o) for o in options)
    if count > limit:
        raise ValueError(f"brute force over {count} cut tuples exceeds the limit of {limit}")
    tuples = np.array(list(itertools.product(*options)), dtype=np.int64)
    bounds = np.concatenate([_lower_bound(model, tuples[i:i + _CHUNK]) for i in range(0, count, _CHUNK)])
    order = np.argsort(bounds, kind="stable")
    best: Result | None = None
    for i in range(0, count, _CHUNK):
        chunk = order[i:i + _CHUNK]
        if best is not None and bounds[chunk[0]] >= best[2]:
            break  # every remaining tuple is at least this slow
        values, shares = model.solve(tuples[chunk])
        j = int(np.argmin(values))
        if best is None or values[j] < best[2]:
            best = (tuples[chunk[j]], shares[j], float(values[j]), 0)
    assert best is not None
    return best


def _lower_bound(model: EpochCostModel, cuts: np.ndarray) -> np.ndarray:
    """Epoch seconds if every device had the whole pool to itself (no share exceeds ``W``)."""
    a, d, weights, active, constant = model.phases(cuts)
    times = np.where(active, a + d / model.total_bandwidth, -np.inf)
    return (weights * times.max(axis=2)).sum(axis=1) + constant

