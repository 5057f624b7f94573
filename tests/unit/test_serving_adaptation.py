"""RepartitionPolicy: when checks run, what they decide, and how baselines re-settle after a switch."""

import pytest

from eclm.serving import NodeProfile, RepartitionPolicy, ServingConfig, build_problem, make_plan

BLOCKS = (0.004, 0.002, 0.003, 0.006, 0.001, 0.002)


def setup(shares=(1.0, 1.0, 1.0), **kw):
    cfg = ServingConfig(**({"node_cpu_shares": list(shares), "node_memory_bytes": None, "link_bandwidth_bytes_per_s": 1e9,
                            "link_latency_s": 0.0, "repartition": True, "monitor_interval_s": 1.0,
                            "repartition_cooldown_s": 2.0} | kw))
    profiles = [NodeProfile(i, s, tuple(t / s for t in BLOCKS), 100.0, (10.0,) * 6, (1.0,) * 6)
                for i, s in enumerate(shares)]
    plan = make_plan(build_problem(profiles, cfg), cfg)
    return RepartitionPolicy(profiles, cfg, plan, now=0.0), plan


def timing(policy, node, scale, events=()):
    held = policy.plan.blocks_of(node)
    return {"node": node, "monitored": True, "events": list(events),
            "smoothed": {b: scale * policy.profiles[node].block_seconds[b] for b in held}}


def settle(policy, scale=1.0, times=5):
    for node in range(policy.config.n_nodes):
        if policy.plan.blocks_of(node):
            for _ in range(times):
                policy.observe(timing(policy, node, scale))


def test_no_check_before_due_and_none_without_repartition():
    policy, _ = setup()
    settle(policy)
    assert policy.decide(now=0.5) is None  # nothing pending, not due
    decision, events = policy.decide(now=1.5)  # periodic check
    assert not decision.switch and events == []
    off, _ = setup(repartition=False)
    off.observe(timing(off, 0, 1.0, events=[{"quantity": "block_latency[0]"}]))
    assert off.decide(now=10.0) is None


def test_a_slowed_node_makes_the_check_switch_and_the_cooldown_holds_the_next():
    policy, plan = setup()
    settle(policy)
    busiest = max(range(3), key=lambda i: len(plan.blocks_of(i)))
    policy.observe(timing(policy, busiest, 2.5, events=[{"quantity": "block_latency[1]"}]))
    assert policy.decide(now=0.2) is None  # an event triggers a check, but the factor still moves
    policy.observe(timing(policy, busiest, 5.0))
    assert policy.decide(now=1.2) is None  # still converging: 2.5 -> 5
    policy.observe(timing(policy, busiest, 5.0))
    decision, events = policy.decide(now=2.2)  # settled: act on the full slowdown
    assert decision.switch and [e["quantity"] for e in events] == ["block_latency[1]"]
    assert policy.factors()[busiest] == pytest.approx(5.0)
    changed = policy.installed(decision.plan, now=2.3)
    assert busiest in changed and len(decision.plan.blocks_of(busiest)) < len(plan.blocks_of(busiest))
    # The moved node keeps its believed factor while it re-settles, so nothing flips back.
    assert policy.factors()[busiest] == pytest.approx(5.0)
    policy.observe(timing(policy, busiest, 5.0, events=[{"quantity": "block_latency[2]"}]))
    assert policy.decide(now=3.0) is None  # within the 2 s cooldown
    settle(policy, times=5)
    checked = policy.decide(now=5.0)
    assert checked is not None and not checked[0].switch


def test_idle_node_status_and_share_changes():
    policy, _ = setup(shares=(0.05, 1.0, 1.0))
    assert 0 in policy.idle_nodes()
    policy.observe_status({"node": 0, "cpu_share": 1.0, "events": [{"quantity": "effective_speed"}]})
    assert policy.shares[0] == 1.0 and policy.factors()[0] == pytest.approx(0.05)
    policy.set_share(2, 0.5)
    assert policy.shares[2] == 0.5


def test_replaced_node_recalibrates_with_its_current_factor():
    policy, plan = setup()
    settle(policy)
    node = next(i for i in range(3) if plan.blocks_of(i))
    policy.observe(timing(policy, node, 3.0))
    before = policy.factors()[node]
    policy.replaced(node)
    assert policy.factors()[node] == pytest.approx(before)
    settle(policy, scale=3.0 * 1.1)  # the new actor serves a little differently: within the threshold
    assert policy.factors()[node] == pytest.approx(before)
