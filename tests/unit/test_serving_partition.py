"""Partitioners: DP optimality against brute force, memory limits, baselines, degenerate cases."""

import itertools
import math

import numpy as np
import pytest

from eclm.serving import (
    PartitionProblem,
    brute_force_partition,
    dp_partition,
    evaluate_plan,
    monolithic_plan,
    proportional_partition,
)


def random_problem(rng: np.random.Generator, *, memory: bool, integer: bool = False) -> PartitionProblem:
    n_nodes, n_blocks = int(rng.integers(1, 5)), int(rng.integers(1, 8))
    lat = rng.uniform(0.1, 2.0, size=(n_nodes, n_blocks))
    if integer:  # integer costs create many exact ties, which exercise tie-breaking
        lat = np.round(lat * 2)
    act = rng.uniform(0, 4e6, size=n_blocks)
    if rng.random() < 0.5:
        bw = rng.uniform(1e6, 1e8, size=n_nodes - 1).tolist()
        ll = rng.uniform(0, 0.05, size=n_nodes - 1).tolist()
    else:
        bw = rng.uniform(1e6, 1e8, size=(n_nodes, n_nodes)).tolist()
        ll = rng.uniform(0, 0.05, size=(n_nodes, n_nodes)).tolist()
    block_mem = rng.uniform(1, 10, size=n_blocks).tolist() if memory else None
    node_mem = rng.uniform(3, 30, size=n_nodes).tolist() if memory else None
    return PartitionProblem(lat.tolist(), act.tolist(), float(rng.uniform(0, 4e6)), bw, ll, block_mem, node_mem)


def solve_or_error(fn, problem, objective):
    try:
        return fn(problem, objective)
    except ValueError as exc:
        assert "no feasible partition" in str(exc)
        return None


@pytest.mark.parametrize("objective", ["throughput", "latency"])
@pytest.mark.parametrize("seed,memory,integer", [(0, False, False), (1, True, False), (2, False, True), (3, True, True)])
def test_dp_matches_brute_force_on_random_instances(objective, seed, memory, integer):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        problem = random_problem(rng, memory=memory, integer=integer)
        dp = solve_or_error(dp_partition, problem, objective)
        bf = solve_or_error(brute_force_partition, problem, objective)
        assert (dp is None) == (bf is None)
        if dp is None:
            continue
        assert dp.fits_memory
        if objective == "throughput":
            assert dp.bottleneck == pytest.approx(bf.bottleneck, rel=1e-9)
        # latency: the objective itself; throughput: the tie-break among min-bottleneck plans
        assert dp.latency == pytest.approx(bf.latency, rel=1e-9)


@pytest.mark.parametrize("seed", [4, 5])
def test_dp_with_a_tolerance_matches_brute_force_and_trades_a_little_rate_for_latency(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        problem = random_problem(rng, memory=False)
        exact, loose = dp_partition(problem), dp_partition(problem, tolerance=0.1)
        bf = brute_force_partition(problem, tolerance=0.1)
        assert loose.latency == pytest.approx(bf.latency, rel=1e-9)
        assert exact.bottleneck <= loose.bottleneck <= 1.1 * exact.bottleneck * (1 + 1e-9)
        assert loose.latency <= exact.latency * (1 + 1e-9)
    # Moving a small last block to a second node gains under 2% (1.02 s -> 1.001 s per step), less
    # than a profile's noise: within a 2% tolerance the single stage wins (no hop, lower latency).
    marginal = PartitionProblem([[1.0, 0.02], [1.0, 0.02]], [1e3, 0.0], 0.0, [1e6], [0.0])
    assert dp_partition(marginal).boundaries == (0, 1, 2)
    assert dp_partition(marginal, tolerance=0.02).boundaries == (0, 2, 2)
    with pytest.raises(ValueError, match="tolerance"):
        dp_partition(marginal, tolerance=1.0)


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_dp_plans_respect_node_memory(objective):
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(80):
        problem = random_problem(rng, memory=True)
        plan = solve_or_error(dp_partition, problem, objective)
        if plan is None:
            continue
        checked += 1
        for stage in plan.stages:
            used = sum(problem.block_memory[stage.start:stage.stop])
            assert used <= problem.node_memory[stage.node]
    assert checked > 10


def test_memory_limit_forces_a_split_that_compute_alone_would_not_choose():
    # Node 0 is 10x faster, so unconstrained everything goes there; its memory holds only 2 blocks.
    problem = PartitionProblem([[1, 1, 1, 1], [10, 10, 10, 10]], [0, 0, 0, 0], 0, [math.inf], [0.0],
                               block_memory=[1, 1, 1, 1], node_memory=[2, 100])
    unconstrained = PartitionProblem([[1, 1, 1, 1], [10, 10, 10, 10]], [0, 0, 0, 0], 0, [math.inf], [0.0])
    assert dp_partition(unconstrained, "latency").boundaries == (0, 4, 4)
    plan = dp_partition(problem, "latency")
    assert plan.boundaries == (0, 2, 4)
    assert plan.fits_memory


def test_infeasible_memory_raises_clear_error():
    problem = PartitionProblem([[1, 1], [1, 1]], [1, 1], 1, [1e6], [0.0], block_memory=[5, 50], node_memory=[10, 10])
    for objective in ("throughput", "latency"):
        with pytest.raises(ValueError, match="no feasible partition"):
            dp_partition(problem, objective)
        with pytest.raises(ValueError, match="no feasible partition"):
            brute_force_partition(problem, objective)


def test_dp_bottleneck_never_worse_than_proportional_or_monolithic():
    rng = np.random.default_rng(11)
    for _ in range(100):
        problem = random_problem(rng, memory=False)
        shares = rng.uniform(0.1, 1.0, size=problem.n_nodes).tolist()
        best = dp_partition(problem, "throughput")
        assert best.bottleneck <= proportional_partition(problem, shares).bottleneck * (1 + 1e-9)
        for node in range(problem.n_nodes):
            assert best.bottleneck <= monolithic_plan(problem, node).bottleneck * (1 + 1e-9)
            assert dp_partition(problem, "latency").latency <= monolithic_plan(problem, node).latency * (1 + 1e-9)


def test_dp_strictly_beats_proportional_on_amp4ec_testbed_shape():
    # Blocks of very unequal cost (as in real CNNs): equal-count runs by CPU share are unbalanced.
    ref = [0.5, 0.5, 4.0, 4.0, 1.0, 1.0, 0.2, 0.2, 0.2, 0.2]
    problem = PartitionProblem.from_speeds(ref, [1.0, 0.6, 0.4], [1e3] * 10, 1e3, [1e9, 1e9], [0.0, 0.0])
    prop = proportional_partition(problem, [1.0, 0.6, 0.4])
    best = dp_partition(problem)
    assert prop.boundaries == (0, 5, 8, 10)
    assert best.bottleneck < prop.bottleneck


@pytest.mark.parametrize("shares,n_blocks,expected", [
    ([1.0, 0.6, 0.4], 10, (5, 3, 2)),
    ([1.0, 1.0], 3, (2, 1)),  # equal remainders favour the earlier node
    ([1.0], 4, (4,)),
])
def test_proportional_counts(shares, n_blocks, expected):
    n = len(shares)
    problem = PartitionProblem([[1.0] * n_blocks] * n, [1.0] * n_blocks, 1.0, [1e6] * (n - 1), [0.0] * (n - 1))
    plan = proportional_partition(problem, shares)
    assert tuple(len(plan.blocks_of(i)) for i in range(n)) == expected


def test_proportional_counts_always_sum_to_n_blocks():
    rng = np.random.default_rng(3)
    for _ in range(50):
        problem = random_problem(rng, memory=False)
        plan = proportional_partition(problem, rng.uniform(0.01, 1, problem.n_nodes).tolist())
        assert sum(len(plan.blocks_of(i)) for i in range(problem.n_nodes)) == problem.n_blocks


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_single_node_takes_everything(objective):
    problem = PartitionProblem([[0.3, 0.1, 0.2]], [1, 1, 1], 1, [], [])
    plan = dp_partition(problem, objective)
    assert plan.boundaries == (0, 3)
    assert plan.latency == pytest.approx(0.6)
    assert plan.bottleneck == pytest.approx(0.6)


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_single_block_runs_on_one_node(objective):
    problem = PartitionProblem([[5.0], [1.0], [3.0]], [10], 0, [1e6, 1e6], [0.0, 0.0])
    plan = dp_partition(problem, objective)
    assert len(plan.stages) == 1
    assert plan.stages[0].node == 1  # fastest, input is free to move (0 bytes, 0 latency)


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_more_nodes_than_blocks(objective):
    problem = PartitionProblem([[1.0, 1.0]] * 5, [0, 0], 0, [math.inf] * 4, [0.0] * 4)
    plan = dp_partition(problem, objective)
    assert len(plan.stages) <= 2
    assert sum(s.stop - s.start for s in plan.stages) == 2
    if objective == "throughput":
        assert plan.bottleneck == pytest.approx(1.0)  # one block per stage


def test_skipped_entry_node_pays_ingress():
    # Node 0 is hopeless; input must travel to node 1: 0.01 s latency + 1e6 B / 1e7 B/s = 0.11 s.
    problem = PartitionProblem([[100.0, 100.0], [1.0, 1.0]], [0, 0], 1e6, [1e7], [0.01])
    plan = dp_partition(problem, "latency")
    assert plan.active_nodes == (1,)
    assert plan.ingress_time == pytest.approx(0.11)
    assert plan.latency == pytest.approx(2.11)


@pytest.mark.parametrize("links", ["chain", "matrix"])
def test_skipping_a_middle_node_uses_relay_or_direct_link(links):
    bw, lat = (([1e6, 2e6], [0.1, 0.2]) if links == "chain"
               else ([[1, 1e6, 5e5], [1, 1, 2e6], [1, 1, 1]], [[0, 0.1, 0.05], [0, 0, 0.2], [0, 0, 0]]))
    problem = PartitionProblem([[1, 1], [50, 50], [1, 1]], [1e6, 0], 0, bw, lat)
    plan = evaluate_plan(problem, (0, 1, 1, 2))
    expected = (0.1 + 1.0) + (0.2 + 0.5) if links == "chain" else 0.05 + 2.0
    assert plan.active_nodes == (0, 2)
    assert plan.stages[0].transfer_time == pytest.approx(expected)


def test_throughput_objective_splits_when_links_are_free_and_latency_objective_may_not():
    problem = PartitionProblem([[1.0, 1.0], [1.0, 1.0]], [0, 0], 0, [math.inf], [0.5])
    tp, lt = dp_partition(problem, "throughput"), dp_partition(problem, "latency")
    assert tp.boundaries == (0, 1, 2) and tp.bottleneck == pytest.approx(1.5)
    assert lt.boundaries in {(0, 2, 2), (0, 0, 2)} and lt.latency == pytest.approx(2.0)


@pytest.mark.parametrize("kwargs,field", [
    (dict(block_latency=[[1, 1], [1]]), "block_latency"),
    (dict(block_latency=[[1, -1]]), "block_latency"),
    (dict(activation_bytes=[1]), "activation_bytes"),
    (dict(input_bytes=-1), "input_bytes"),
    (dict(link_bandwidth=[0.0]), "link_bandwidth"),
    (dict(link_latency=[1.0, 2.0]), "link_latency"),
    (dict(block_memory=[1, -1]), "block_memory"),
    (dict(node_memory=[1]), "node_memory"),
])
def test_problem_validation_names_field(kwargs, field):
    base = dict(block_latency=[[1, 1], [1, 1]], activation_bytes=[1, 1], input_bytes=1,
                link_bandwidth=[1e6], link_latency=[0.0])
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        PartitionProblem(**base)


def test_bad_arguments_raise():
    problem = PartitionProblem([[1, 1], [1, 1]], [1, 1], 1, [1e6], [0.0])
    with pytest.raises(ValueError, match="objective"):
        dp_partition(problem, "speed")
    with pytest.raises(ValueError, match="cpu_shares"):
        proportional_partition(problem, [1.0])
    with pytest.raises(ValueError, match="node"):
        monolithic_plan(problem, 2)
    with pytest.raises(ValueError, match="boundaries"):
        evaluate_plan(problem, (0, 2, 1))


def test_evaluate_plan_costs_match_definition():
    problem = PartitionProblem([[1, 2, 3], [4, 5, 6]], [100, 200, 300], 50, [100.0], [0.5])
    plan = evaluate_plan(problem, (0, 2, 3))
    s0, s1 = plan.stages
    assert (s0.compute_time, s0.transfer_time) == (3.0, 0.5 + 200 / 100)
    assert (s1.compute_time, s1.transfer_time) == (6.0, 0.0)
    assert plan.bottleneck == 6.0 and plan.latency == 3.0 + 2.5 + 6.0
    assert all(len(plan.blocks_of(i)) == c for i, c in zip((0, 1), (2, 1), strict=True))
    assert list(itertools.chain.from_iterable(plan.blocks_of(i) for i in range(2))) == [0, 1, 2]


def test_numpy_inputs_are_accepted_as_chain_or_matrix():
    rng = np.random.default_rng(5)
    lat, act = rng.uniform(0.1, 1, (3, 4)), rng.uniform(0, 1e6, 4)
    chain = PartitionProblem(lat, act, 1e5, np.full(2, 1e7), np.zeros(2))
    matrix = PartitionProblem(lat, act, 1e5, np.full((3, 3), 1e7), np.zeros((3, 3)))
    # A matrix with equal direct links is cheaper than store-and-forward relaying, never dearer.
    assert dp_partition(matrix).bottleneck <= dp_partition(chain).bottleneck
    assert dp_partition(chain).bottleneck == pytest.approx(brute_force_partition(chain).bottleneck)
