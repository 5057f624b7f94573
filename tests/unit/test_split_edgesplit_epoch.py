"""EdgeSplit with the epoch objective: the planner's clock is the delay model's, its shares are
optimal, its cuts are within 5% of brute force, and it counts the epoch-end exchange."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from eclm.pipelines.split_local import emulated_epoch_seconds
from eclm.split import (
    BlockCosts,
    ComputeModel,
    LinkModel,
    SplitDevice,
    best_common_cut_plan,
    brute_force_plan,
    epoch_seconds,
    plan_edgesplit,
    uniform_cut_plan,
)
from eclm.split._bandwidth import optimal_shares, shares_objective
from eclm.split._epoch_model import LABEL_BYTES, build_epoch_model
from eclm.split._time_model import equalise_bandwidth


def random_instance(seed: int, num_devices: int = 4, num_blocks: int = 6, steps: int = 5, memory: bool = False):
    """Heterogeneous devices, activations shrinking with depth, growing device parts, uneven steps."""
    rng = np.random.default_rng(seed)
    acts = np.sort(rng.uniform(1e2, 1e5, num_blocks + 1))[::-1] * rng.uniform(0.3, 1.5, num_blocks + 1)
    costs = BlockCosts(
        forward_flops=rng.uniform(1e6, 1e8, num_blocks),
        activation_bytes=acts,
        param_bytes=rng.uniform(1e5, 1e6, num_blocks),
        train_activation_bytes=rng.uniform(1e3, 3e4, num_blocks),
        state_bytes=rng.uniform(1e3, 1e5, num_blocks) * np.arange(1, num_blocks + 1),
        call_flops=rng.uniform(0, 5e7, num_blocks),
    )
    devices = [
        SplitDevice(speed=10 ** rng.uniform(8.5, 10.5), memory=rng.uniform(2e6, 8e6) if memory else 1e12,
                    batch_size=16, latency=rng.uniform(0, 0.01), name=f"dev{i}")
        for i in range(num_devices)
    ]
    batches = rng.integers(0, 17, (steps, num_devices))
    batches[0] = 16  # every device takes part, and its largest batch is its batch_size
    return costs, devices, 10 ** rng.uniform(5, 7), 10 ** rng.uniform(9.5, 11), batches


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_is_the_delay_model_function(seed: int) -> None:
    costs, devices, bandwidth, server, batches = random_instance(seed)
    model = build_epoch_model(costs, devices, bandwidth, server, 4.0, batches)
    rng = np.random.default_rng(seed)
    cuts = rng.integers(1, costs.num_blocks + 1, (6, len(devices)))
    shares = rng.dirichlet(np.ones(len(devices)), 6) * bandwidth

    closed = model.seconds(cuts, shares)

    for c, w, value in zip(cuts, shares, closed, strict=True):
        assert value == pytest.approx(model.epoch_time(c, w)["total_s"], rel=1e-12)


def test_planned_epoch_time_is_what_the_delay_model_measures_for_the_predicted_steps() -> None:
    costs, devices, bandwidth, server, batches = random_instance(7)
    ratio = 4.0
    plan = plan_edgesplit(costs, devices, bandwidth, server, compression_ratio=ratio, step_batches=batches)
    names = [d.name for d in devices]
    records: dict[str, list[dict]] = {n: [] for n in names}
    server_records = []
    for t, row in enumerate(batches):
        for k, (n, b) in enumerate(zip(names, row, strict=True)):
            if b:
                c = plan.cuts[k]
                fwd = (b * costs.device_flops(c) + costs.device_call_flops(c)) / 3 / devices[k].speed
                nbytes = b * costs.cut_bytes(c)
                records[n].append({"epoch": 0, "step": t, "forward_s": fwd, "backward_s": 2 * fwd,
                                   "bits_up": 8 * nbytes / ratio, "label_bits": 8 * LABEL_BYTES * b,
                                   "bits_down": 8 * nbytes})
        groups = {c for b, c in zip(row, plan.cuts, strict=True) if b}  # one server pass per cut group
        server_records.append({"epoch": 0, "step": t, "server_s": (
            sum(b * costs.server_flops(c) for b, c in zip(row, plan.cuts, strict=True))
            + sum(costs.server_call_flops(c) for c in groups)) / server})
    links = {n: LinkModel(w, d.latency) for n, w, d in zip(names, plan.bandwidths, devices, strict=True)}
    sync = {n: (costs.exchange_bytes(c),) * 2 for n, c in zip(names, plan.cuts, strict=True)}

    measured = emulated_epoch_seconds(records, server_records, dict.fromkeys(names, ComputeModel()), links, sync,
                                      shared_bandwidth=bandwidth)

    assert measured["total_s"] == pytest.approx(plan.epoch_time, rel=1e-9)


def _reference_minimum(a: np.ndarray, d: np.ndarray, weights: np.ndarray, active: np.ndarray, total: float) -> float:
    """A general-purpose solver (SLSQP on the epigraph) for the share problem."""
    rows, n = a.shape

    def constraint(v: np.ndarray, j: int, k: int) -> float:
        return v[n + j] - a[j, k] - d[j, k] / v[k]

    cons = [{"type": "eq", "fun": lambda v: v[:n].sum() - total}]
    cons += [{"type": "ineq", "fun": constraint, "args": (j, k)} for j in range(rows) for k in range(n) if active[j, k]]
    start = np.full(n, total / n)
    z0 = np.where(active, a + d / start, -np.inf).max(axis=1) + 1.0
    result = minimize(lambda v: float(weights @ v[n:]), np.r_[start, z0], method="SLSQP", constraints=cons,
                      bounds=[(1e-9 * total, total)] * n + [(None, None)] * rows,
                      options={"ftol": 1e-14, "maxiter": 2000})
    return float(shares_objective(a[None], d[None], weights, active, result.x[None, :n])[0][0])


@pytest.mark.parametrize("seed", range(6))
def test_share_solver_is_certified_and_matches_a_general_solver(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, rows = int(rng.integers(2, 6)), int(rng.integers(1, 4))
    a, d = rng.uniform(0, 1, (2 * rows, n)), rng.uniform(0.1, 3, (2 * rows, n))
    weights = rng.integers(1, 20, 2 * rows).astype(float)
    active = rng.random((rows, n)) < 0.8
    active[:, 0] = True
    active = np.concatenate([active, active])

    values, shares, lower = optimal_shares(a[None], d[None], weights, active, 4.0)

    assert shares.sum() == pytest.approx(4.0) and (shares > 0).all()
    assert lower[0] <= values[0] <= lower[0] + 1e-7 * values[0]
    assert values[0] <= _reference_minimum(a, d, weights, active, 4.0) * (1 + 1e-7)


def test_share_solver_equalises_a_single_maximum() -> None:
    rng = np.random.default_rng(3)
    a, d = rng.uniform(0, 1, (1, 5)), rng.uniform(0.1, 3, (1, 5))

    values, _, _ = optimal_shares(a[None], d[None], np.ones(1), np.ones((1, 5), bool), 2.0)

    assert values[0] == pytest.approx(equalise_bandwidth(a[0], d[0], 2.0)[1], rel=1e-6)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ratio", [1.0, 8.0])
def test_epoch_planner_is_within_five_percent_of_brute_force(seed: int, ratio: float) -> None:
    costs, devices, bandwidth, server, batches = random_instance(seed, memory=seed % 2 == 1)
    args = (costs, devices, bandwidth, server)
    kw = {"compression_ratio": ratio, "step_batches": batches}

    plan = plan_edgesplit(*args, **kw)
    exact = brute_force_plan(*args, **kw)

    assert exact.epoch_time <= plan.epoch_time * (1 + 1e-7)  # brute force is the optimum
    assert plan.epoch_time <= 1.05 * exact.epoch_time
    # Never slower than what it starts from: every common cut and the paper's plan's cuts.
    assert plan.epoch_time <= best_common_cut_plan(*args, **kw).epoch_time * (1 + 1e-9)
    assert plan.epoch_time <= plan_edgesplit(*args, objective="iteration", **kw).epoch_time * (1 + 1e-9)
    for p in (plan, exact):
        assert sum(p.bandwidths) == pytest.approx(bandwidth)
        assert all(costs.device_memory(c, d.batch_size) <= d.memory for c, d in zip(p.cuts, devices, strict=True))


def test_brute_force_finds_the_optimum_of_a_dense_grid() -> None:
    costs, devices, bandwidth, server, batches = random_instance(11, num_devices=2, num_blocks=3)
    model = build_epoch_model(costs, devices, bandwidth, server, 1.0, batches)
    fractions = np.linspace(1e-4, 1 - 1e-4, 20001)
    shares = np.stack([fractions, 1 - fractions], axis=1) * bandwidth
    grid = min(float(model.seconds(np.repeat(np.array([cuts]), len(shares), axis=0), shares).min())
               for cuts in itertools.product(costs.cuts, repeat=2))

    exact = brute_force_plan(costs, devices, bandwidth, server, step_batches=batches)

    assert exact.epoch_time <= grid * (1 + 1e-7)  # the share solver's certified tolerance
    assert exact.epoch_time == pytest.approx(grid, rel=1e-4)


def exchange_heavy_instance(state_bytes: list[float] | None):
    """A deep cut sends little per step but carries a large device part."""
    costs = BlockCosts(forward_flops=[1e7] * 4, activation_bytes=[4e4, 3e4, 2e4, 1e4, 1e2],
                       param_bytes=[1e5] * 4, train_activation_bytes=[1e4] * 4, state_bytes=state_bytes)
    devices = [SplitDevice(speed=1e11, memory=1e12, batch_size=16, latency=0.001, name=f"d{i}") for i in range(2)]
    return costs, devices, 1e6, 1e12, np.full((10, 2), 16)


def test_epoch_objective_pays_for_the_exchange_the_iteration_objective_ignores() -> None:
    costs, devices, bandwidth, server, batches = exchange_heavy_instance([1e3, 1e3, 1e3, 5e6])
    args, kw = (costs, devices, bandwidth, server), {"step_batches": batches}

    per_iteration = plan_edgesplit(*args, objective="iteration", **kw)
    per_epoch = plan_edgesplit(*args, **kw)
    free_exchange = plan_edgesplit(*exchange_heavy_instance(None)[:4], **kw)

    assert per_iteration.cuts == (4, 4) and free_exchange.cuts == (4, 4)  # least traffic per step
    assert max(per_epoch.cuts) < 4
    assert per_epoch.epoch_time < 0.5 * per_iteration.epoch_time
    assert per_iteration.round_time <= per_epoch.round_time  # each wins on its own objective


def test_uniform_and_iteration_plans_report_their_epoch_time() -> None:
    costs, devices, bandwidth, server, batches = random_instance(2)

    uniform = uniform_cut_plan(costs, devices, bandwidth, server, 2, step_batches=batches)
    paper = plan_edgesplit(costs, devices, bandwidth, server, objective="iteration")

    model = build_epoch_model(costs, devices, bandwidth, server, 1.0, batches)
    assert uniform.epoch_time == pytest.approx(model.epoch_time(uniform.cuts, uniform.bandwidths)["total_s"])
    assert paper.epoch_time is None and paper.objective == "iteration"


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        (np.full((3, 3), 4), r"shape \(steps, 4\)"),
        (np.full((3, 4), 17), "gets 17 samples in a step but its memory is checked at batch_size 16"),
        (np.array([[4, 4, 4, 0]] * 2), r"device 'dev3' \(index 3\) has no samples"),
        (np.full((3, 4), 2.5), "integer"),
    ],
)
def test_step_batches_are_validated(batches: np.ndarray, message: str) -> None:
    costs, devices, bandwidth, server, _ = random_instance(0)

    with pytest.raises(ValueError, match=message):
        plan_edgesplit(costs, devices, bandwidth, server, step_batches=batches)


def test_epoch_seconds_by_hand() -> None:
    active = np.array([[True, True], [False, True]])
    fwd, bwd = np.array([[1.0, 0.5], [0.0, 0.2]]), np.array([[2.0, 0.5], [0.0, 0.1]])
    up, down = np.array([[100.0, 10.0], [0.0, 10.0]]), np.array([[200.0, 10.0], [0.0, 0.0]])

    out = epoch_seconds(fwd, bwd, up, down, [0.3, 0.1], active, [100.0, 10.0], [0.01, 0.0],
                        sync_up=[50.0, 1e6], sync_down=[100.0, 1e6], shared_bandwidth=50.0,
                        exchanging=[True, False])

    step0 = max(1.0 + 0.01 + 1.0, 0.5 + 1.0) + 0.3 + max(0.01 + 2.0 + 2.0, 1.0 + 0.5)
    step1 = (0.2 + 1.0) + 0.1 + 0.1
    assert out["steps_s"] == pytest.approx(step0 + step1)
    assert out["sync_s"] == pytest.approx(2 * 0.01 + 150.0 / 50.0)  # the second device does not exchange
    with pytest.raises(ValueError, match="must be"):
        epoch_seconds(fwd, bwd, up, down, [0.3], active, [100.0, 10.0], [0.0, 0.0])
