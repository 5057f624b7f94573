"""Sub-task x module assignment for module ability-enhancing training (ECLM, arXiv 2311.11083; docs/architecture.md).

Given the load matrix H (T sub-tasks x N modules, mean gate per sub-task) of one layer, choose a
binary mask M maximising ``sum(H * M)`` such that every module serves at most ``kappa1``
sub-tasks and every sub-task uses between 1 and ``kappa2`` modules. Solved exactly as an integer
program with ``scipy.optimize.milp``. The target routing is ``P = H * M`` normalised per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


def assign_modules(load: np.ndarray, kappa1: int, kappa2: int) -> np.ndarray:
    """Solve the sub-task/module assignment ILP for one layer.

    Args:
        load: ``(T, N)`` non-negative load matrix H.
        kappa1: Maximum sub-tasks per module.
        kappa2: Maximum modules per sub-task (each sub-task gets at least one).

    Returns:
        ``(T, N)`` 0/1 mask M.

    Raises:
        ValueError: If the constraints cannot all hold (``T > N * kappa1``) or inputs are invalid.
    """
    load = np.asarray(load, dtype=float)
    if load.ndim != 2 or np.any(load < 0) or not np.all(np.isfinite(load)):
        raise ValueError("load must be a finite non-negative (T, N) matrix")
    t, n = load.shape
    if kappa1 < 1 or kappa2 < 1:
        raise ValueError(f"kappa1 and kappa2 must be >= 1, got {kappa1}, {kappa2}")
    if t > n * kappa1:
        raise ValueError(f"{t} sub-tasks cannot each get a module when {n} modules serve <= {kappa1} each")
    rows, lo, hi = [], [], []
    for j in range(n):  # module load <= kappa1
        r = np.zeros((t, n))
        r[:, j] = 1
        rows.append(r.ravel()), lo.append(0), hi.append(kappa1)
    for i in range(t):  # 1 <= modules per sub-task <= kappa2
        r = np.zeros((t, n))
        r[i, :] = 1
        rows.append(r.ravel()), lo.append(1), hi.append(kappa2)
    # A tiny bonus keeps the solution well defined when loads tie (e.g. a fresh uniform router).
    c = -(load.ravel() + 1e-6)
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(t * n), bounds=Bounds(0, 1))
    if res.x is None:
        raise ValueError(f"sub-task assignment infeasible: {res.message}")
    return np.round(res.x).reshape(t, n).astype(int)


def target_routing(load: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-normalised ``H * M``; rows whose masked load is zero spread uniformly over the mask."""
    p = np.asarray(load, dtype=float) * mask
    sums = p.sum(axis=1, keepdims=True)
    uniform = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)
    return np.where(sums > 0, p / np.where(sums > 0, sums, 1), uniform)


def class_subtasks(num_classes: int, classes_per_task: int) -> list[list[int]]:
    """Default sub-tasks: contiguous groups of ``classes_per_task`` classes (last may be short)."""
    if not 1 <= classes_per_task <= num_classes:
        raise ValueError(f"classes_per_task must be in [1, {num_classes}], got {classes_per_task}")
    return [list(range(s, min(s + classes_per_task, num_classes))) for s in range(0, num_classes, classes_per_task)]


def subtask_of_labels(labels: np.ndarray, subtasks: Sequence[Sequence[int]]) -> np.ndarray:
    """Index of the first sub-task containing each label (``-1`` if none)."""
    lookup: dict[int, int] = {}
    for t, classes in enumerate(subtasks):
        for c in classes:
            lookup.setdefault(int(c), t)
    return np.array([lookup.get(int(y), -1) for y in labels])
