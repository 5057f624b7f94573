"""Sub-model derivation: a multi-dimensional knapsack over modules (ECLM, arXiv 2311.11083; docs/architecture.md).

Maximise the total importance of the selected modules subject to every resource budget the
device sets, with at least one module per layer unless the layer may take its residual module.
Solved exactly with ``scipy.optimize.milp`` (HiGHS); a greedy fallback covers solver failure.
Either way the result is checked against the budget before it is returned (feasible by
construction, never by hope).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from eclm.modules.costs import CostTable
from eclm.modules.spec import DeviceProfile, SubModelSpec

# A tiny reward per selected module breaks ties between equally important selections in favour
# of using the budget (more capacity) without ever outweighing a real importance difference.
_TIE_BREAK = 1e-6


class BudgetTooSmallError(ValueError):
    """The device budget cannot hold even the minimal sub-model."""


def minimal_cost(costs: CostTable, allows_empty: Sequence[bool], held: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """Per-dimension lower bound of any sub-model's cost (each dimension minimised separately)."""
    vec = costs.base.copy()
    for i, (empty_ok, mods) in enumerate(zip(allows_empty, costs.modules, strict=True)):
        avail = list(held[i]) if held is not None else list(range(len(mods)))
        options = [costs.shared[i] + mods[j] for j in avail]
        if empty_ok:
            options.append(costs.empty[i])
        vec = vec + np.min(np.stack(options), axis=0)
    return dict(zip(costs.dims, (float(v) for v in vec), strict=True))


def derive_submodel(
    modular_or_costs,
    importance: Sequence[Sequence[float]],
    budget: DeviceProfile,
    *,
    model_id: str | None = None,
    allows_empty: Sequence[bool] | None = None,
    held: SubModelSpec | None = None,
    time_limit: float = 10.0,
    solver: str = "milp",
) -> SubModelSpec:
    """Choose the most important modules that fit the device's budget.

    Args:
        modular_or_costs: A :class:`~eclm.modules.ModularModel`, or a :class:`CostTable` (then
            ``model_id`` and ``allows_empty`` are required: what a device holds without the model).
        importance: Per layer, per module mean selector probability on the device's data.
        budget: The device's resource limits (unset dimensions are unconstrained).
        model_id: Fingerprint for the returned spec (taken from the model when given).
        allows_empty: Per layer, whether the residual module may be chosen.
        held: Restrict the choice to modules of this spec (local swap on the device).
        time_limit: MILP time limit in seconds.
        solver: ``"milp"`` (exact, greedy fallback) or ``"greedy"``.

    Returns:
        A feasible :class:`SubModelSpec`.

    Raises:
        BudgetTooSmallError: If a budget is below the minimal sub-model's cost in that dimension
            (the message names the budget and the minimum), or no feasible selection exists.
        ValueError: If ``importance`` does not match the layer sizes.
    """
    costs, model_id, allows_empty = _cost_source(modular_or_costs, model_id, allows_empty)
    sizes = [len(m) for m in costs.modules]
    imp = _checked_importance(importance, sizes)
    avail = [list(held.groups[i]) if held is not None else list(range(n)) for i, n in enumerate(sizes)]
    empty_ok = [bool(a) and (held is None or not held.groups[i] or True) for i, a in enumerate(allows_empty)]
    limits = budget.limits()
    _check_minimum(costs, budget, empty_ok, avail)
    groups = None
    if solver == "milp":
        groups = _solve_milp(costs, imp, limits, avail, empty_ok, time_limit)
    if groups is None:
        groups = _solve_greedy(costs, imp, limits, avail, empty_ok)
    if groups is None:
        raise BudgetTooSmallError(f"device {budget.name!r}: no sub-model satisfies all budgets {limits} jointly")
    spec = SubModelSpec(model_id=model_id, groups=groups)
    _assert_feasible(costs, spec, limits)
    return spec


def _cost_source(modular_or_costs, model_id: str | None, allows_empty: Sequence[bool] | None):
    """``(cost table, model id, allows_empty)`` from a modular model, or a cost table with both given."""
    if hasattr(modular_or_costs, "costs"):
        return (modular_or_costs.costs(), modular_or_costs.model_id,
                [l.allows_empty for l in modular_or_costs.layers])
    if model_id is None or allows_empty is None:
        raise ValueError("derive_submodel from a CostTable needs model_id and allows_empty")
    return modular_or_costs, model_id, allows_empty


def _checked_importance(importance: Sequence[Sequence[float]], sizes: list[int]) -> list[np.ndarray]:
    imp = [np.asarray(v, dtype=float) for v in importance]
    if [len(v) for v in imp] != sizes:
        raise ValueError(f"importance shape {[len(v) for v in imp]} does not match layer sizes {sizes}")
    if any(np.any(~np.isfinite(v)) or np.any(v < 0) for v in imp):
        raise ValueError("importance must be finite and non-negative")
    return imp


def _check_minimum(costs: CostTable, budget: DeviceProfile, empty_ok, avail) -> None:
    """Raise :class:`BudgetTooSmallError` naming the first budget below the minimal sub-model's cost."""
    minimum = minimal_cost(costs, empty_ok, avail)
    for dim, limit in budget.limits().items():
        if limit < minimum[dim]:
            raise BudgetTooSmallError(
                f"device {budget.name!r}: budget {dim}={limit:.6g} is below the minimal sub-model's "
                f"{dim}={minimum[dim]:.6g}"
            )


def shrink_submodel(
    costs: CostTable,
    current: SubModelSpec,
    importance: Sequence[Sequence[float]],
    budget: DeviceProfile,
    allows_empty: Sequence[bool],
) -> SubModelSpec:
    """Local swap: the best sub-model within ``budget`` using only modules ``current`` holds.

    Runs on the device with the cost table it received with its spec; no cloud round trip.
    """
    return derive_submodel(
        costs, importance, budget, model_id=current.model_id, allows_empty=allows_empty, held=current
    )


def fits(costs: CostTable, spec: SubModelSpec, budget: DeviceProfile) -> bool:
    """Whether ``spec`` satisfies every limit of ``budget``."""
    total = costs.total(spec)
    return all(total[d] <= lim * (1 + 1e-9) for d, lim in budget.limits().items())


def _assert_feasible(costs: CostTable, spec: SubModelSpec, limits: dict[str, float]) -> None:
    total = costs.total(spec)
    for dim, limit in limits.items():
        if total[dim] > limit * (1 + 1e-9):
            raise AssertionError(f"derived sub-model violates {dim}: {total[dim]} > {limit}")


def _solve_milp(costs, imp, limits, avail, empty_ok, time_limit) -> list[tuple[int, ...]] | None:
    # Variables: x[l, i] (module i of layer l selected) for every module, then y[l] (layer l
    # non-empty). Layer cost = empty_l * (1 - y_l) + shared_l * y_l + sum_i module_li * x_li.
    sizes = [len(m) for m in costs.modules]
    offsets = np.cumsum([0] + sizes)
    n_x, n_l = int(offsets[-1]), len(sizes)
    c = np.zeros(n_x + n_l)
    for l, v in enumerate(imp):
        c[offsets[l] : offsets[l + 1]] = -(v + _TIE_BREAK)
    lb, ub = np.zeros(n_x + n_l), np.ones(n_x + n_l)
    for l in range(n_l):
        allowed = np.zeros(sizes[l], dtype=bool)
        allowed[avail[l]] = True
        ub[offsets[l] : offsets[l + 1]] = allowed
        if not empty_ok[l]:
            lb[n_x + l] = 1.0
    rows, lo, hi = [], [], []
    for l in range(n_l):
        for i in range(sizes[l]):  # x_li <= y_l
            r = np.zeros(n_x + n_l)
            r[offsets[l] + i], r[n_x + l] = 1.0, -1.0
            rows.append(r), lo.append(-np.inf), hi.append(0.0)
        r = np.zeros(n_x + n_l)  # y_l <= sum_i x_li
        r[offsets[l] : offsets[l + 1]] = -1.0
        r[n_x + l] = 1.0
        rows.append(r), lo.append(-np.inf), hi.append(0.0)
    for dim, limit in limits.items():
        d = costs.dims.index(dim)
        r = np.zeros(n_x + n_l)
        const = costs.base[d]
        for l in range(n_l):
            r[offsets[l] : offsets[l + 1]] = costs.modules[l][:, d]
            empty = costs.empty[l][d] if empty_ok[l] else 0.0
            r[n_x + l] = costs.shared[l][d] - empty
            const += empty
        scale = max(abs(limit), 1.0)  # keep the row well conditioned for HiGHS
        rows.append(r / scale), lo.append(-np.inf), hi.append((limit - const) / scale)
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), np.array(lo), np.array(hi)),
        integrality=np.ones(n_x + n_l),
        bounds=Bounds(lb, ub),
        options={"time_limit": time_limit},
    )
    if res.x is None:
        return None
    x = np.round(res.x).astype(int)
    groups = [tuple(int(i) for i in np.nonzero(x[offsets[l] : offsets[l + 1]])[0]) for l in range(n_l)]
    spec_ok = all(g or empty_ok[l] for l, g in enumerate(groups))
    if not spec_ok or not _within(costs, groups, limits):
        return None
    return groups


def _within(costs: CostTable, groups, limits) -> bool:
    vec = costs.base + sum(costs.layer_cost(l, g) for l, g in enumerate(groups))
    return all(vec[costs.dims.index(d)] <= lim * (1 + 1e-9) for d, lim in limits.items())


def _solve_greedy(costs, imp, limits, avail, empty_ok) -> list[tuple[int, ...]] | None:
    """Start from the cheapest valid selection, then add modules by importance per unit cost."""
    dims = [costs.dims.index(d) for d in limits]
    lim = np.array([limits[d] for d in limits]) if limits else np.zeros(0)

    def norm_cost(vec: np.ndarray) -> float:
        return float(np.max(vec[dims] / lim)) if dims else 0.0

    groups: list[list[int]] = []
    for l, mods in enumerate(costs.modules):
        if empty_ok[l] or not avail[l]:
            groups.append([])
        else:
            groups.append([min(avail[l], key=lambda i, l=l: norm_cost(costs.shared[l] + mods[i]))])
    if not _within(costs, groups, limits):
        return None
    candidates = [(l, i) for l in range(len(groups)) for i in avail[l] if i not in groups[l]]
    candidates.sort(key=lambda li: -(imp[li[0]][li[1]] + _TIE_BREAK) / max(norm_cost(costs.modules[li[0]][li[1]]), 1e-12))
    for l, i in candidates:
        trial = [list(g) for g in groups]
        trial[l] = sorted(trial[l] + [i])
        if _within(costs, trial, limits):
            groups = trial
    return [tuple(g) for g in groups]
