"""Sub-model derivation (multi-dimensional knapsack) and the device-side local swap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from eclm.modules import (
    RESOURCE_DIMS,
    BudgetTooSmallError,
    CostTable,
    DeviceProfile,
    ModularModel,
    SubModelSpec,
    derive_submodel,
    fits,
    minimal_cost,
    modularize,
    narrow,
    shrink_submodel,
)

BUDGET_DIMS = [
    ("params",),
    ("flops",),
    ("activation_bytes",),
    ("payload_bytes",),
    ("params", "flops"),
    ("flops", "activation_bytes", "payload_bytes"),
    RESOURCE_DIMS,
]
MODELS = {
    "resnet18": ("resnet18", {"channels": (16, 32, 64, 128)}),
    "mobilenetv3": ("mobilenetv3_small_050", {}),  # three layers without a skip: never empty
}


@pytest.fixture(scope="module", params=list(MODELS))
def modular(request) -> ModularModel:
    torch.manual_seed(0)
    name, kwargs = MODELS[request.param]
    model = modularize(name, modules_per_layer=4, num_classes=10, **kwargs).eval()
    with torch.no_grad():  # timm zero-initialises last-BN weights; make every module matter
        for m in model.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)
    model.costs()
    return model


def random_importance(sizes: list[int], seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(rng.dirichlet(np.ones(n))) for n in sizes]


def budget_between(costs: CostTable, allows_empty, dims, fraction: float, name: str = "dev") -> DeviceProfile:
    """A budget at ``fraction`` of the way from the minimal to the full model's cost per dim."""
    lo = minimal_cost(costs, allows_empty)
    full = costs.total(SubModelSpec(model_id="x", groups=[tuple(range(len(m))) for m in costs.modules]))
    return DeviceProfile(name=name, **{f"max_{d}": lo[d] + fraction * (full[d] - lo[d]) for d in dims})


def objective(importance, spec: SubModelSpec) -> float:
    return float(sum(importance[li][i] for li, g in enumerate(spec.groups) for i in g))


def random_table(seed: int, layers: int, modules: int) -> CostTable:
    """A hand-built cost table with random positive costs (empty cheaper than any module)."""
    rng = np.random.default_rng(seed)
    return CostTable(
        base=rng.uniform(1, 10, 4),
        empty=[rng.uniform(0, 2, 4) for _ in range(layers)],
        shared=[rng.uniform(1, 5, 4) for _ in range(layers)],
        modules=[rng.uniform(1, 10, (modules, 4)) for _ in range(layers)],
    )


def all_specs(sizes: list[int], allows_empty: list[bool], held=None):
    """Every spec (brute force), optionally restricted to subsets of ``held``."""
    per_layer = []
    for li, n in enumerate(sizes):
        pool = list(held[li]) if held is not None else list(range(n))
        subsets = [c for r in range(len(pool) + 1) for c in itertools.combinations(pool, r)]
        per_layer.append([s for s in subsets if s or allows_empty[li]])
    for groups in itertools.product(*per_layer):
        yield SubModelSpec(model_id="tiny", groups=groups)


@pytest.mark.parametrize("dims", BUDGET_DIMS, ids="+".join)
@pytest.mark.parametrize("fraction", [0.05, 0.5])
def test_derived_submodel_respects_every_budget(modular: ModularModel, dims, fraction: float) -> None:
    costs = modular.costs()
    allows_empty = [layer.allows_empty for layer in modular.layers]
    importance = random_importance(modular.layer_sizes, seed=1)
    budget = budget_between(costs, allows_empty, dims, fraction)

    for solver in ("milp", "greedy"):
        spec = derive_submodel(modular, importance, budget, solver=solver)

        assert spec.model_id == modular.model_id
        assert fits(costs, spec, budget), (solver, costs.total(spec), budget.limits())
        for layer, groups in zip(modular.layers, spec.groups, strict=True):
            assert groups or layer.allows_empty, (solver, layer.name)
        assert spec.num_modules() < modular.full_spec().num_modules()


def test_milp_is_at_least_as_good_as_greedy(modular: ModularModel) -> None:
    costs = modular.costs()
    allows_empty = [layer.allows_empty for layer in modular.layers]

    for seed in range(3):
        importance = random_importance(modular.layer_sizes, seed)
        budget = budget_between(costs, allows_empty, ("params", "flops"), 0.3)
        exact = derive_submodel(modular, importance, budget)
        greedy = derive_submodel(modular, importance, budget, solver="greedy")

        assert objective(importance, exact) >= objective(importance, greedy) - 1e-4


def test_unconstrained_budget_keeps_every_module(modular: ModularModel) -> None:
    importance = random_importance(modular.layer_sizes, seed=2)

    spec = derive_submodel(modular, importance, DeviceProfile())

    assert spec == modular.full_spec()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("solver", ["milp", "greedy"])
def test_derivation_matches_brute_force_on_tiny_instance(seed: int, solver: str) -> None:
    rng = np.random.default_rng(100 + seed)
    layers, modules = (3, 3) if seed % 2 else (2, 3)
    table = random_table(seed, layers, modules)
    allows_empty = [bool(rng.integers(2)) for _ in range(layers)]
    importance = [list(rng.uniform(0, 1, modules)) for _ in range(layers)]
    dims = BUDGET_DIMS[seed % len(BUDGET_DIMS)]
    budget = budget_between(table, allows_empty, dims, rng.uniform(0.1, 0.7))
    feasible = [s for s in all_specs([modules] * layers, allows_empty) if fits(table, s, budget)]
    best = max((objective(importance, s) for s in feasible), default=None)

    if best is None:
        with pytest.raises(BudgetTooSmallError):
            derive_submodel(
                table, importance, budget, model_id="tiny", allows_empty=allows_empty, solver=solver
            )
        return
    spec = derive_submodel(
        table, importance, budget, model_id="tiny", allows_empty=allows_empty, solver=solver
    )

    assert fits(table, spec, budget)
    assert all(g or ok for g, ok in zip(spec.groups, allows_empty, strict=True))
    if solver == "milp":
        assert objective(importance, spec) == pytest.approx(best, abs=1e-4)
    else:
        assert objective(importance, spec) <= best + 1e-9


@pytest.mark.parametrize("dim", RESOURCE_DIMS)
def test_too_small_budget_names_dimension_budget_and_minimum(modular: ModularModel, dim: str) -> None:
    minimum = minimal_cost(modular.costs(), [layer.allows_empty for layer in modular.layers])[dim]
    limit = 0.5 * minimum
    budget = DeviceProfile(name="watch", **{f"max_{dim}": limit})

    with pytest.raises(BudgetTooSmallError) as info:
        derive_submodel(modular, random_importance(modular.layer_sizes, 0), budget)

    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert dim in message and "watch" in message
    assert f"{limit:.6g}" in message and f"{minimum:.6g}" in message


def test_minimal_budget_gives_minimal_submodel(modular: ModularModel) -> None:
    costs = modular.costs()
    allows_empty = [layer.allows_empty for layer in modular.layers]
    minimum = minimal_cost(costs, allows_empty)

    spec = derive_submodel(
        modular, random_importance(modular.layer_sizes, 3), DeviceProfile(max_params=minimum["params"])
    )

    assert costs.total(spec)["params"] == pytest.approx(minimum["params"])
    assert spec.num_modules() == sum(not ok for ok in allows_empty)


@pytest.mark.parametrize(
    ("importance", "match"),
    [
        ([[0.5, 0.5]], "does not match layer sizes"),
        ([[0.25] * 4, [0.25] * 3], "does not match layer sizes"),
        ([[0.1, 0.2, -0.3, 0.4], [0.25] * 4], "non-negative"),
        ([[0.1, 0.2, float("nan"), 0.4], [0.25] * 4], "finite"),
    ],
)
def test_bad_importance_is_rejected(importance, match: str) -> None:
    table = random_table(0, layers=2, modules=4)

    with pytest.raises(ValueError, match=match):
        derive_submodel(table, importance, DeviceProfile(), model_id="tiny", allows_empty=[True, True])


def test_cost_table_without_model_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="model_id and allows_empty"):
        derive_submodel(random_table(0, 2, 2), [[0.5, 0.5]] * 2, DeviceProfile())


def test_cost_table_round_trips_through_dict() -> None:
    table = random_table(1, layers=3, modules=2)
    table.empty[1] = np.full(4, np.nan)

    back = CostTable.from_dict(table.to_dict())

    spec = SubModelSpec(model_id="t", groups=[(0,), (1,), ()])
    assert back.total(spec) == table.total(spec)
    np.testing.assert_array_equal(back.empty[1], table.empty[1])


@pytest.mark.parametrize(
    "groups", [[(0, 2), (), (1,)], [(3, 1, 2)], [], [(0,), (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)]]
)
def test_spec_round_trips_through_json(groups) -> None:
    spec = SubModelSpec(model_id="abc123", groups=groups)

    back = SubModelSpec.from_json(spec.to_json())

    assert back == spec and hash(back) == hash(spec)
    assert back.groups == tuple(tuple(sorted(g)) for g in groups)


@pytest.mark.parametrize("groups", [[(0, 0)], [(1, -1)]])
def test_spec_rejects_duplicate_or_negative_indices(groups) -> None:
    with pytest.raises(ValidationError, match="unique and non-negative"):
        SubModelSpec(model_id="m", groups=groups)


def test_spec_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        SubModelSpec.from_json('{"model_id": "m", "groups": [[0]], "owner": "x"}')


@pytest.mark.parametrize("shrink", [0.7, 0.3])
def test_local_shrink_is_subset_that_fits_smaller_budget(modular: ModularModel, shrink: float) -> None:
    costs = modular.costs()
    allows_empty = [layer.allows_empty for layer in modular.layers]
    importance = random_importance(modular.layer_sizes, seed=4)
    budget = budget_between(costs, allows_empty, ("params", "flops"), 0.6)
    held = derive_submodel(modular, importance, budget)
    low = minimal_cost(costs, allows_empty, held.groups)
    smaller = DeviceProfile(max_params=low["params"] + shrink * (costs.total(held)["params"] - low["params"]))

    new = shrink_submodel(costs, held, importance, smaller, allows_empty)

    assert held.contains(new)
    assert fits(costs, new, smaller)
    assert new.num_modules() < held.num_modules()


@pytest.mark.parametrize("seed", range(6))
def test_local_shrink_matches_brute_force_over_held_modules(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    table = random_table(seed, layers=3, modules=3)
    allows_empty = [True, False, True]
    importance = [list(rng.uniform(0, 1, 3)) for _ in range(3)]
    held = SubModelSpec(model_id="tiny", groups=[(0, 2), (1, 2), (0, 1, 2)])
    budget = DeviceProfile(max_flops=0.6 * table.total(held)["flops"])
    feasible = [s for s in all_specs([3] * 3, allows_empty, held.groups) if fits(table, s, budget)]
    best = max((objective(importance, s) for s in feasible), default=None)

    if best is None:
        with pytest.raises(BudgetTooSmallError):
            shrink_submodel(table, held, importance, budget, allows_empty)
        return
    new = shrink_submodel(table, held, importance, budget, allows_empty)

    assert held.contains(new) and fits(table, new, budget)
    assert objective(importance, new) == pytest.approx(best, abs=1e-4)


def test_device_shrink_equals_cloud_extraction(modular: ModularModel) -> None:
    costs = modular.costs()
    allows_empty = [layer.allows_empty for layer in modular.layers]
    importance = random_importance(modular.layer_sizes, seed=5)
    held = derive_submodel(modular, importance, budget_between(costs, allows_empty, ("params",), 0.6))
    smaller = budget_between(costs, allows_empty, ("params",), 0.2)
    new = shrink_submodel(costs, held, importance, smaller, allows_empty)
    x = torch.randn(3, 3, 32, 32)

    device_model = narrow(modular.extract(held), modular.layers, held.groups, new.groups).eval()
    cloud_model = modular.extract(new).eval()

    with torch.no_grad():
        assert torch.equal(device_model(x), cloud_model(x))
    assert new != held


@pytest.mark.parametrize("solver", ["milp", "greedy"])
def test_jointly_infeasible_budget_is_reported(solver: str) -> None:
    # Each budget alone admits a module (params-cheap or flops-cheap), no module satisfies both.
    table = CostTable(
        base=np.zeros(4),
        empty=[np.full(4, np.nan)],
        shared=[np.zeros(4)],
        modules=[np.array([[1.0, 10.0, 1.0, 1.0], [10.0, 1.0, 1.0, 1.0]])],
    )
    budget = DeviceProfile(name="tight", max_params=2.0, max_flops=2.0)

    with pytest.raises(BudgetTooSmallError, match="jointly"):
        derive_submodel(table, [[0.5, 0.5]], budget, model_id="t", allows_empty=[False], solver=solver)
