"""From node profiles to plans and routes; slowdown tracking with calibration; re-plans."""

import random

import pytest

from eclm.serving import (
    NodeProfile,
    PartitionProblem,
    ServingConfig,
    SlowdownTracker,
    brute_force_partition,
    build_problem,
    dp_partition,
    evaluate_plan,
    make_plan,
    replan,
    routes_for,
    strongest_node,
)

BLOCKS = (0.004, 0.002, 0.003, 0.006, 0.001, 0.002)


def profiles(shares, blocks=BLOCKS):
    return [NodeProfile(i, s, tuple(t / s for t in blocks), 3072.0, (4096.0, 2048, 2048, 1024, 512, 40),
                        (100.0, 200, 300, 400, 500, 50)) for i, s in enumerate(shares)]


def config(shares=(1.0, 0.6, 0.4), **kw):
    return ServingConfig(node_cpu_shares=list(shares), node_memory_bytes=None, link_bandwidth_bytes_per_s=1e8,
                         link_latency_s=1e-4, **kw)


@pytest.mark.parametrize("shares", [(1.0, 0.6, 0.4), (0.5, 0.5, 0.5, 0.5), (0.4, 1.0)])
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_dp_plan_from_profiles_is_optimal(shares, objective):
    cfg = config(shares, objective=objective)
    problem = build_problem(profiles(shares), cfg)
    plan = make_plan(problem, cfg)
    best = brute_force_partition(problem, objective, cfg.plan_tolerance)
    assert plan.latency == pytest.approx(best.latency) and plan.bottleneck == pytest.approx(best.bottleneck)


def test_partitioner_variants_and_strongest_node():
    cfg = config((0.4, 1.0, 0.6))
    problem = build_problem(profiles(cfg.node_cpu_shares), cfg)
    mono = make_plan(problem, cfg, "monolithic")
    assert strongest_node(cfg.node_cpu_shares) == 1 and mono.active_nodes == (1,)
    prop = make_plan(problem, cfg, "proportional")
    assert [s.stop - s.start for s in prop.stages] == [1, 3, 2]  # 6 blocks by 0.4 : 1.0 : 0.6
    with pytest.raises(ValueError, match="partitioner"):
        make_plan(problem, cfg, "greedy")


def test_slowdown_factors_scale_node_rows_and_profiles_are_checked():
    cfg = config()
    base = build_problem(profiles(cfg.node_cpu_shares), cfg)
    slowed = build_problem(profiles(cfg.node_cpu_shares), cfg, [1.0, 3.0, 1.0])
    assert slowed.block_latency[1] == pytest.approx([3 * t for t in base.block_latency[1]])
    assert slowed.block_latency[0] == base.block_latency[0]
    with pytest.raises(ValueError, match="one profile per node"):
        build_problem(profiles((1.0, 0.5)), cfg)
    with pytest.raises(ValueError, match="slowdown"):
        build_problem(profiles(cfg.node_cpu_shares), cfg, [1.0, 0.0, 1.0])
    odd = profiles(cfg.node_cpu_shares)
    odd[2] = NodeProfile(2, 0.4, (1.0,) * 7, 3072.0, (1.0,) * 7, (1.0,) * 7)
    with pytest.raises(ValueError, match="different chain"):
        build_problem(odd, cfg)


@pytest.mark.parametrize("boundaries,expected", [
    ((0, 2, 4, 6), [(0, 0, 2, 1), (1, 2, 4, 1), (2, 4, 6, 0)]),
    ((0, 3, 3, 6), [(0, 0, 3, 2), (2, 3, 6, 0)]),          # node 1 skipped: two link hops
    ((0, 0, 6, 6), [(0, 0, 0, 1), (1, 0, 6, 0)]),          # node 0 idle: it relays the input one hop
    ((0, 0, 0, 6), [(0, 0, 0, 2), (2, 0, 6, 0)]),
])
def test_routes_follow_the_plan(boundaries, expected):
    cfg = config()
    plan = evaluate_plan(build_problem(profiles(cfg.node_cpu_shares), cfg), boundaries)
    routes = routes_for(plan)
    assert [(r.node, r.start, r.stop, r.hops_out) for r in routes] == expected
    assert [r.is_relay for r in routes] == [r[1] == r[2] for r in expected]


def observe(tracker, scale, times=1):
    for _ in range(times):
        tracker.observe({b: scale * tracker.profile.block_seconds[b] for b in tracker.held})


def test_tracker_calibrates_away_steady_serving_overhead():
    (p,) = profiles((1.0,))
    t = SlowdownTracker(p, threshold=0.25, settle=3)
    t.reset(range(1, 4), 1.0)
    observe(t, 2.0, times=5)  # serving runs 2x slower than the isolated profile, steadily
    assert t.factor() == 1.0
    observe(t, 2.0 * 4)       # then the node really slows down 4x
    assert t.factor() == pytest.approx(4.0)


@pytest.mark.parametrize("scale,expected", [(1.1, 1.0), (0.85, 1.0), (1.5, 1.5), (0.5, 0.5)])
def test_tracker_ignores_changes_within_threshold(scale, expected):
    (p,) = profiles((1.0,))
    t = SlowdownTracker(p, threshold=0.25, settle=1)
    t.reset(range(0, 6), 1.0)
    observe(t, 1.0)
    observe(t, scale)
    assert t.factor() == pytest.approx(expected)


def test_tracker_keeps_the_known_factor_until_settled_and_after_reassignment():
    (p,) = profiles((1.0,))
    t = SlowdownTracker(p, threshold=0.1, settle=3)
    t.reset(range(0, 2), 3.0)  # moved here while believed 3x slow
    observe(t, 1.7, times=2)
    assert t.factor() == 3.0   # not settled yet
    observe(t, 1.7)
    assert t.factor() == 3.0   # the baseline is the 3x state, so no change
    observe(t, 1.7 / 3)        # the node recovered: 3x faster than its baseline
    assert t.factor() == pytest.approx(1.0)


def test_idle_tracker_uses_cpu_share():
    (p,) = profiles((0.8,))
    t = SlowdownTracker(p, threshold=0.25)
    assert t.factor(0.8) == 1.0 and t.factor(0.2) == pytest.approx(4.0) and t.factor(0.7) == 1.0


def test_replan_switches_dp_after_a_slowdown_and_proportional_on_share_change():
    cfg = config()
    profs = profiles(cfg.node_cpu_shares)
    current = make_plan(build_problem(profs, cfg), cfg)
    same = replan(build_problem(profs, cfg), current, cfg, cfg.node_cpu_shares)
    assert not same.switch
    slowed = replan(build_problem(profs, cfg, [5.0, 1.0, 1.0]), current, cfg, cfg.node_cpu_shares)
    assert slowed.switch and slowed.best_cost < slowed.current_cost
    assert len(slowed.plan.blocks_of(0)) < len(current.blocks_of(0))
    prop_cfg = config(partitioner="proportional")
    prop = make_plan(build_problem(profs, prop_cfg), prop_cfg)
    moved = replan(build_problem(profs, prop_cfg), prop, prop_cfg, [0.2, 0.6, 0.4])
    assert moved.switch and moved.plan.boundaries != prop.boundaries
    mono_cfg = config(partitioner="monolithic", repartition=False)
    with pytest.raises(ValueError, match="re-partition"):
        replan(build_problem(profs, mono_cfg), current, mono_cfg, mono_cfg.node_cpu_shares)


def test_an_idle_tracker_remembers_a_slowdown_and_sees_a_share_recovery():
    (p,) = profiles((1.0,))
    t = SlowdownTracker(p, threshold=0.25)
    t.reset(range(0), 4.0, cpu_share=0.25)  # went idle while 4x slow at share 0.25
    assert t.factor(0.25) == 4.0            # no news: still believed slow
    assert t.factor(1.0) == pytest.approx(1.0)  # the share came back
    t.reset(range(0), 5.0, cpu_share=1.0)   # slow without a share change (contention)
    assert t.factor(1.0) == 5.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_stage_overhead_is_charged_per_active_stage_and_dp_stays_optimal(seed, objective):
    rng = random.Random(seed)
    n, blocks = rng.randint(2, 4), rng.randint(3, 7)
    overhead = [rng.uniform(0.0, 0.02) for _ in range(n)]
    problem = PartitionProblem([[rng.uniform(0.001, 0.01) for _ in range(blocks)] for _ in range(n)],
                               [rng.uniform(0, 1e4) for _ in range(blocks)], 1e3, [1e6] * (n - 1), [1e-3] * (n - 1),
                               stage_overhead=overhead)
    plan = dp_partition(problem, objective)
    best = brute_force_partition(problem, objective)
    key = (lambda p: p.bottleneck) if objective == "throughput" else (lambda p: p.latency)
    assert key(plan) == pytest.approx(key(best))
    for stage in plan.stages:
        blocks_s = sum(problem.block_latency[stage.node][stage.start:stage.stop])
        assert stage.compute_time == pytest.approx(blocks_s + overhead[stage.node])
    with pytest.raises(ValueError, match="stage_overhead"):
        PartitionProblem([[1.0]], [1.0], 1.0, [], [], stage_overhead=[-1.0])
