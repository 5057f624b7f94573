"""Which modules a device trains: the training-memory model and the trainable-subset choice.

Module-sparse adaptation (docs/method.md) trains a budgeted subset of a device's modules plus the
classifier rows of its classes; frozen modules carry no gradient or optimizer state and backward
stops at the earliest trainable layer, so the layers before it run without autograd. Training
memory is therefore not a sum of per-module costs: it has a term that depends on *where* the
earliest trainable module sits. :class:`TrainingMemory` models it from the measured cost table:

``memory = weight_bytes * params(sub-model)``
``       + trainable_bytes * params(trainable)``
``       + activation_factor * batch * activation_bytes(layers from the earliest trainable one on)``
``       + slice_copy_factor * weight_bytes * params(tensors trained only in part)``

with ``trainable_bytes`` covering a parameter's gradient, momentum, the copy the upload is diffed
against and the codec's error-feedback residual, ``activation_factor`` the kept activations,
their gradients and backward's temporaries, and the last term the whole-tensor copies that
training part of a tensor costs: :mod:`eclm.modules.sparse_training` writes the trainable slice
into a copy of the frozen tensor on every forward, autograd keeps that copy for backward, and
backward computes the whole tensor's gradient before taking its slice
(tests/unit/test_modules_trainable.py counts these with autograd's saved-tensor hooks). The
classifier's own activations (a pooled vector and the logits, well under a kilobyte per sample)
and blocks outside module layers that follow the earliest trainable layer are left out. The
frozen stages' output, which training may keep for every sample, is not part of the model: a
device keeps it only within the memory its plan leaves free
(:func:`eclm.pipelines.adaptation.finetune`). The benchmarks measure the real peak.

:func:`derive_trainable` maximises the importance of the trainable modules within a share of the
sub-model's parameters and the memory limit, exactly: for every possible earliest trainable part
(the stem, a module layer, or none) the rest is a 0/1 knapsack on parameters, solved exactly over
the Pareto frontier of choices (beyond :data:`EXACT_SEARCH_ITEMS` modules by counts per module size,
or ``scipy.optimize.milp`` where the modules come in too many sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from eclm.modules.costs import CostTable
from eclm.modules.derive import BudgetTooSmallError
from eclm.modules.spec import SubModelSpec, TrainableSpec

_TIE_BREAK = 1e-6  # per module: among equally important choices, train more
#: What training the parts outside modules is worth, in importance: one whole layer (a row of
#: importance sums to 1), since every sample passes through them.
SHARED_VALUE = 1.0
#: Training memory per byte of kept activation: the activation itself, its gradient and backward's
#: temporaries (measured 2.5-2.8 where backward reaches the stem; docs/method.md). Every training
#: memory estimate of the platform uses it.
ACTIVATION_FACTOR = 3.0
#: Knapsacks of up to this many modules are solved over the Pareto frontier in Python (a sub-model of
#: the quick model has about 16; ``milp`` costs about 8 ms a call there, and a derivation makes
#: about 9 calls); larger ones by ``scipy.optimize.milp``.
EXACT_SEARCH_ITEMS = 24
#: Larger knapsacks whose items come in few sizes (the modules of a layer are one size) are solved
#: exactly by counts per size when there are at most this many count combinations; the others by
#: ``scipy.optimize.milp``.
GROUPED_SEARCH_CHOICES = 2**20


@dataclass(frozen=True)
class TrainingMemory:
    """The analytic training-memory model of one device (see the module docstring).

    Attributes:
        batch: Samples per training batch (fresh plus replayed).
        head_row_params: Parameters of one classifier row (its weights and bias).
        num_classes: Classifier rows.
        weight_bytes: Bytes per held parameter (float32 weights).
        trainable_bytes: Bytes per trainable parameter besides its weight.
        activation_factor: Kept activations, their gradients and backward's temporaries, per
            activation byte (measured 2.5-2.8 for plans whose backward reaches the stem, at a batch
            of 24 on a CPU build of torch; docs/method.md).
        slice_copy_factor: Whole-tensor copies per parameter of a tensor trained only in part
            (the copy kept for backward and its whole-size gradient).
    """

    batch: float
    head_row_params: int
    num_classes: int
    weight_bytes: float = 4.0
    trainable_bytes: float = 16.0
    activation_factor: float = ACTIVATION_FACTOR
    slice_copy_factor: float = 2.0

    def trainable_params(self, costs: CostTable, spec: SubModelSpec, plan: TrainableSpec) -> float:
        """Parameters ``plan`` trains in the sub-model ``spec``."""
        p = costs.dims.index("params")
        modules = sum(float(costs.modules[l][list(g)][:, p].sum()) for l, g in enumerate(plan.groups) if g)
        head = self.head_row_params * (self.num_classes if plan.head_rows is None else len(plan.head_rows))
        if not plan.shared:
            return modules + head
        held_modules = sum(float(costs.modules[l][list(g)][:, p].sum()) for l, g in enumerate(spec.groups) if g)
        outside = costs.total(spec)["params"] - held_modules - self.head_row_params * self.num_classes
        return modules + head + outside

    def kept_activations(self, costs: CostTable, spec: SubModelSpec, plan: TrainableSpec) -> float:
        """Activation bytes per sample kept for backward (from the earliest trainable layer on)."""
        a = costs.dims.index("activation_bytes")
        if plan.shared:
            return costs.total(spec)["activation_bytes"]
        first = next((l for l, g in enumerate(plan.groups) if g), None)
        if first is None:
            return 0.0
        return float(sum(costs.layer_cost(l, spec.groups[l])[a] for l in range(first, len(spec.groups))))

    def sliced_params(self, costs: CostTable, spec: SubModelSpec, plan: TrainableSpec) -> float:
        """Parameters of the tensors ``plan`` trains only in part: the module tensors of every layer
        where it trains some but not all of the held modules, and the classifier when it trains
        some of its rows."""
        rows = plan.head_rows
        head = self.head_row_params * self.num_classes if rows is not None and 0 < len(rows) < self.num_classes else 0
        return _held_params(costs, spec, _partly_trained(spec, plan)) + head

    def breakdown(self, costs: CostTable, spec: SubModelSpec, plan: TrainableSpec) -> dict[str, float]:
        """``{"weights", "trainable", "activations", "slice_copies", "total"}`` in bytes."""
        weights = self.weight_bytes * costs.total(spec)["params"]
        trainable = self.trainable_bytes * self.trainable_params(costs, spec, plan)
        acts = self.activation_factor * self.batch * self.kept_activations(costs, spec, plan)
        copies = self.slice_copy_factor * self.weight_bytes * self.sliced_params(costs, spec, plan)
        return {"weights": weights, "trainable": trainable, "activations": acts, "slice_copies": copies,
                "total": weights + trainable + acts + copies}

    def total(self, costs: CostTable, spec: SubModelSpec, plan: TrainableSpec) -> float:
        return self.breakdown(costs, spec, plan)["total"]


def derive_trainable(
    costs: CostTable,
    spec: SubModelSpec,
    importance: Sequence[Sequence[float]],
    memory: TrainingMemory,
    *,
    max_memory: float | None,
    share: float | None,
    head_rows: Sequence[int] | None,
) -> TrainableSpec:
    """The trainable subset of ``spec``: most important modules within ``share`` and ``max_memory``.

    The candidates are the sub-model's modules (worth their importance) and the parts outside
    modules as one unit (stem, the norm and shortcut after each layer's module sum, undecomposed
    blocks; worth one whole layer, ``SHARED_VALUE``, since every sample passes through them and
    input-level shifts such as image corruptions are best met there). Training that unit means
    backward reaches the stem, so it is chosen only when the memory allows keeping every
    activation. The classifier rows of the device's classes are always trained.

    Args:
        costs: The cost table.
        spec: The device's sub-model.
        importance: Per layer, per module importance on the device's data.
        memory: The training-memory model.
        max_memory: Training-memory limit in bytes (``None``: unconstrained).
        share: Cap on trainable parameters (modules and the parts outside them) as a share of the
            sub-model's parameters (``None``: no cap; then dense training is chosen whenever it fits).
        head_rows: Classifier rows the device trains (its classes; ``None``: every row).

    Returns:
        A :class:`TrainableSpec` within ``spec`` whose modelled memory is within ``max_memory``.

    Raises:
        BudgetTooSmallError: If not even the classifier rows alone fit ``max_memory``.
    """
    dense = TrainableSpec.dense(spec)
    if share is None and (max_memory is None or memory.total(costs, spec, dense) <= max_memory):
        return dense
    rows = None if head_rows is None else tuple(head_rows)
    cap_share = np.inf if share is None else share * costs.total(spec)["params"]
    best: tuple[float, float, TrainableSpec] | None = None
    for first in [None, -1, *[l for l, g in enumerate(spec.groups) if g]]:
        plan = _best_from(costs, spec, importance, memory, first, rows, cap_share, max_memory)
        if plan is None:
            continue
        value = sum(float(importance[l][g]) + _TIE_BREAK for l, gs in enumerate(plan.groups) for g in gs)
        key = (value + (SHARED_VALUE if plan.shared else 0.0), -memory.total(costs, spec, plan))
        if best is None or key > best[:2]:
            best = (*key, plan)
    if best is None:
        need = memory.total(costs, spec, TrainableSpec(groups=((),) * len(spec.groups), head_rows=rows))
        raise BudgetTooSmallError(f"training memory {max_memory:.6g} B is below the {need:.6g} B of training "
                                  "the classifier rows alone")
    return best[2]


def _best_from(costs, spec, importance, memory: TrainingMemory, first: int | None, rows, cap_share: float,
               max_memory: float | None) -> TrainableSpec | None:
    """The best plan whose earliest trainable part is layer ``first`` (``-1``: the parts outside
    modules, i.e. the stem; ``None``: classifier rows only).

    Past the fixed costs of ``first`` the choice is a knapsack on parameters, except for the
    whole-tensor copies of layers trained in part, which depend on the choice. The knapsack is
    solved without them first; while its plan does not fit with its copies, the copies of the
    layers it trains in part are reserved and the knapsack solved again within what is left. A plan
    returned always fits; it is the best one when the first plan fits.
    """
    empty = ((),) * len(spec.groups)
    base = TrainableSpec(groups=empty, head_rows=rows, shared=first == -1)
    fixed = memory.total(costs, spec, base)
    cap = cap_share
    if first == -1:
        cap -= memory.trainable_params(costs, spec, base) - memory.trainable_params(costs, spec, base.model_copy(
            update={"shared": False}))
    elif first is not None:
        a = costs.dims.index("activation_bytes")
        fixed += memory.activation_factor * memory.batch * sum(
            costs.layer_cost(l, spec.groups[l])[a] for l in range(first, len(spec.groups)))
    if first is None:
        return base if max_memory is None or fixed <= max_memory else None
    reserved: set[int] = set()
    while True:
        copies = memory.slice_copy_factor * memory.weight_bytes * _held_params(costs, spec, reserved)
        limit = cap if max_memory is None else min(cap, (max_memory - fixed - copies) / memory.trainable_bytes)
        plan = _choose(costs, spec, importance, base, first, limit) if limit >= 0 else None
        if plan is None or max_memory is None or memory.total(costs, spec, plan) <= max_memory:
            return plan
        partial = _partly_trained(spec, plan)
        if partial <= reserved:  # its copies were reserved, so it fits; guards against rounding
            return None
        reserved |= partial


def _partly_trained(spec: SubModelSpec, plan: TrainableSpec) -> set[int]:
    """Module layers where ``plan`` trains some but not all of the modules ``spec`` holds."""
    return {l for l, (held, trained) in enumerate(zip(spec.groups, plan.groups, strict=True))
            if trained and set(trained) != set(held)}


def _held_params(costs: CostTable, spec: SubModelSpec, layers: set[int]) -> float:
    """Parameters of the modules ``spec`` holds in ``layers``."""
    p = costs.dims.index("params")
    return sum(float(costs.modules[l][list(spec.groups[l])][:, p].sum()) for l in layers)


def _choose(costs, spec, importance, base: TrainableSpec, first: int, cap: float) -> TrainableSpec | None:
    """``base`` plus the most important modules from layer ``first`` on (at least one of layer
    ``first`` when it is a module layer) with at most ``cap`` parameters."""
    start = max(first, 0)
    items = [(l, g) for l in range(start, len(spec.groups)) for g in spec.groups[l]]
    p = costs.dims.index("params")
    chosen = _knapsack(np.array([float(importance[l][g]) + _TIE_BREAK for l, g in items]),
                       np.array([costs.modules[l][g][p] for l, g in items]), cap,
                       np.array([l == first for l, _ in items]) if first >= 0 else None)
    if chosen is None:
        return None
    groups = [[] for _ in spec.groups]
    for i in chosen:
        groups[items[i][0]].append(items[i][1])
    return base.model_copy(update={"groups": tuple(tuple(g) for g in groups)})


def _knapsack(values: np.ndarray, sizes: np.ndarray, cap: float, must: np.ndarray | None) -> list[int] | None:
    """Indices maximising ``values`` with ``sizes`` summing to at most ``cap`` (and at least one
    ``must`` when given)."""
    n = len(values)
    if n == 0:
        return [] if must is None else None
    if not np.isfinite(cap):
        return list(range(n))
    positive = bool((values > 0).all()) and bool((sizes > 0).all())
    if n <= EXACT_SEARCH_ITEMS and positive:
        return _pareto_knapsack(values, sizes, cap, must)
    if positive:
        groups = _size_groups(sizes, must)
        if _combinations(groups) <= GROUPED_SEARCH_CHOICES:
            return _grouped_knapsack(values, groups, cap, must is not None)
    scale = max(cap, 1.0)
    rows = [LinearConstraint(sizes[None, :] / scale, -np.inf, cap / scale)]
    if must is not None:
        rows.append(LinearConstraint(must[None, :].astype(float), 1.0, np.inf))
    res = milp(-values, constraints=rows, integrality=np.ones(n), bounds=Bounds(np.zeros(n), np.ones(n)))
    if res.x is None:
        return None
    chosen = [i for i in range(n) if res.x[i] > 0.5]
    if sizes[chosen].sum() > cap * (1 + 1e-9) or (must is not None and not must[chosen].any()):
        return None
    return chosen


def _pareto_knapsack(values: np.ndarray, sizes: np.ndarray, cap: float, must: np.ndarray | None) -> list[int] | None:
    """:func:`_knapsack` for positive values and sizes, exactly, by dynamic programming over the
    Pareto frontier of (size, value) choices (Nemhauser and Ullmann): a partial choice is kept only
    if no other is at most as large and worth as much (within ``1e-12``, relative), so equally good
    choices collapse into one (the modules of one layer are the same size) instead of being
    enumerated. With ``must``, choices with and without a ``must`` item are kept apart."""
    slack = cap * (1 + 1e-9)
    # a choice: (size, value, items); frontier[True] holds the choices that contain a must item
    frontier: dict[bool, list[tuple[float, float, tuple[int, ...]]]] = {False: [(0.0, 0.0, ())], True: []}
    for i in range(len(values)):
        v, w = float(values[i]), float(sizes[i])
        grows_into = must is not None and bool(must[i])
        added = {has: [(s + w, val + v, items + (i,)) for s, val, items in frontier[has] if s + w <= slack]
                 for has in (False, True)}
        if grows_into:
            frontier[True] = _pareto(frontier[True] + added[True] + added[False])
        else:
            frontier[True] = _pareto(frontier[True] + added[True])
            frontier[False] = _pareto(frontier[False] + added[False])
    found = frontier[True] if must is not None else frontier[False] + frontier[True]
    if not found:
        return None
    return list(max(found, key=lambda c: (c[1], -c[0]))[2])


def _size_groups(sizes: np.ndarray, must: np.ndarray | None) -> dict[tuple[float, bool], list[int]]:
    """Items by (size, whether a ``must`` item): within a group only how many are taken matters."""
    groups: dict[tuple[float, bool], list[int]] = {}
    for i, size in enumerate(sizes.tolist()):
        groups.setdefault((size, must is not None and bool(must[i])), []).append(i)
    return groups


def _combinations(groups: dict[tuple[float, bool], list[int]]) -> int:
    """How many (size, value) choices :func:`_grouped_knapsack` could meet at most."""
    return int(np.prod([len(g) + 1 for g in groups.values()], dtype=float))


def _grouped_knapsack(values: np.ndarray, by_size: dict[tuple[float, bool], list[int]], cap: float,
                      must: bool) -> list[int] | None:
    """:func:`_knapsack` for positive values and sizes whose items come in groups of one size (the
    modules of a layer; ``by_size`` from :func:`_size_groups`), exactly: the best ``c`` items of a
    group are its ``c`` most valuable, so the choice is a count per group, found by dynamic
    programming over the Pareto frontier of (size, value) in numpy (at most
    :data:`GROUPED_SEARCH_CHOICES` choices are ever met). With ``must`` (at least one item of a
    ``must`` group), choices with and without such an item are kept apart."""
    slack = cap * (1 + 1e-9)
    groups = list(by_size.items())
    size, value = np.zeros(1), np.zeros(1)
    has = np.zeros(1, dtype=bool)  # whether the choice holds a ``must`` item
    counts = np.zeros((1, len(groups)), dtype=np.int64)
    ranked = []
    for g, ((item_size, is_must), items) in enumerate(groups):
        order = sorted(items, key=lambda i: -float(values[i]))
        ranked.append(order)
        take = np.arange(len(order) + 1)
        gains = np.concatenate([[0.0], np.cumsum(values[order])])
        size = (size[:, None] + take[None, :] * item_size).ravel()
        value = (value[:, None] + gains[None, :]).ravel()
        has = (has[:, None] | ((take > 0) & is_must)[None, :]).ravel()
        rows = np.repeat(np.arange(len(counts)), len(take))
        counts = counts[rows]
        counts[:, g] = np.tile(take, len(counts) // len(take))
        keep = np.flatnonzero(size <= slack)
        keep = np.concatenate([_frontier(size, value, keep[has[keep] == flag]) for flag in (False, True)])
        size, value, has, counts = size[keep], value[keep], has[keep], counts[keep]
    found = np.flatnonzero(has) if must else np.arange(len(size))
    if not len(found):
        return None
    best = found[np.lexsort((size[found], -value[found]))[0]]  # the most valuable, then the smallest
    return sorted(i for g, order in enumerate(ranked) for i in order[: counts[best, g]])


def _frontier(size: np.ndarray, value: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Of the choices ``among``, those no earlier one (by size, then value) is worth as much as
    (within ``1e-12``, relative): :func:`_pareto` on arrays."""
    if not len(among):
        return among
    ordered = among[np.lexsort((-value[among], size[among]))]
    v = value[ordered]
    best = np.maximum.accumulate(v)[:-1]
    return ordered[np.concatenate([[True], v[1:] > best + 1e-12 * np.abs(best)])]


def _pareto(choices: list[tuple[float, float, tuple[int, ...]]]) -> list[tuple[float, float, tuple[int, ...]]]:
    """The choices no other dominates (smaller or equal size, at least the value), by size; among
    equal ones the first in ``choices``' order."""
    out: list[tuple[float, float, tuple[int, ...]]] = []
    for c in sorted(choices, key=lambda c: (c[0], -c[1])):
        if not out or c[1] > out[-1][1] + 1e-12 * abs(out[-1][1]):
            out.append(c)
    return out


__all__ = ["ACTIVATION_FACTOR", "EXACT_SEARCH_ITEMS", "GROUPED_SEARCH_CHOICES", "SHARED_VALUE", "TrainingMemory",
           "derive_trainable"]
