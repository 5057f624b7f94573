"""Replica placement inputs and the session's MLflow record builders."""

from collections import deque

import pytest

from eclm.serving import (
    CPU_NEED,
    NodeProfile,
    ServingConfig,
    build_problem,
    busy_fraction,
    create_scheduler,
    make_plan,
    plan_costs,
    plan_record,
    replica_states,
    session_metrics,
)


@pytest.mark.parametrize("entries,now,window,expected,left", [
    ([(9.5, 0.2), (9.8, 0.3)], 10.0, 1.0, 0.5, 2),
    ([(8.0, 0.9), (9.9, 0.1)], 10.0, 1.0, 0.1, 1),   # the old entry drops out of the window
    ([(9.9, 0.7), (9.95, 0.7)], 10.0, 1.0, 1.0, 2),  # clipped to 1
    ([], 10.0, 0.5, 0.0, 0),
])
def test_busy_fraction(entries, now, window, expected, left):
    q = deque(entries)
    assert busy_fraction(q, now, window) == pytest.approx(expected)
    assert len(q) == left
    with pytest.raises(ValueError):
        busy_fraction(q, now, 0.0)


def test_replica_states_feed_the_amp4ec_scheduler():
    states = replica_states([0, 2], [1.0, 0.6, 0.4], [1e9, 5e8, 5e8], [0.9, 0.0, 0.3], 2e6, 0.001)
    assert [s.node_id for s in states] == [0, 2] and states[1].cpu_avail == 0.4 and states[1].mem_avail == 5e8
    assert all(s.cpu_need == CPU_NEED and s.mem_need == 2e6 for s in states)
    scheduler = create_scheduler("amp4ec")
    assert scheduler.choose(states) == 1  # node 0 is above AMP4EC's 0.8 load filter
    unlimited = replica_states([1], [1.0, 0.6], None, [0.0, 0.0], 1.0, 0.0)
    assert unlimited[0].mem_avail > 1e12


def test_session_records_and_metrics():
    cfg = ServingConfig(node_cpu_shares=[1.0, 0.5], node_memory_bytes=None, micro_batch_size=4, max_in_flight=8)
    profiles = [NodeProfile(i, s, (0.01 / s, 0.02 / s), 10.0, (5.0, 1.0), (3.0, 4.0), 0.001) for i, s in
                enumerate(cfg.node_cpu_shares)]
    plan = make_plan(build_problem(profiles, cfg), cfg)
    costs = plan_costs(plan, 4)
    assert costs["throughput_rps"] == pytest.approx(4 / plan.bottleneck)
    record = plan_record("cloud-1", "cloud", {"v": 1}, cfg, 2, plan, profiles, [])
    assert record["boundaries"] == list(plan.boundaries) and record["profiles"][1]["stage_overhead_s"] == 0.001
    assert sum(s["blocks"][1] - s["blocks"][0] for s in record["stages"]) == 2
    empty = session_metrics("cloud-1", {"requests": 0, "failed": 2, "retried": 1, "repartitions": 0,
                                        "replacements": 1})
    assert empty == {"serving/cloud-1/requests": 0.0, "serving/cloud-1/failed": 2.0, "serving/cloud-1/retried": 1.0,
                     "serving/cloud-1/repartitions": 0.0, "serving/cloud-1/replacements": 1.0}
    full = session_metrics("s", {"requests": 3, "throughput_rps": 5.0, "emulated_throughput_rps": 6.0,
                                 "schedule_us_per_request": 1.5, "latency_ms": {"p50": 1.0, "p95": 2.0},
                                 "service_ms": {"p50": 1.0}, "emulated_latency_ms": {"p50": 0.5},
                                 "emulated_queued_ms": {"p95": 3.0}, "stage_load": {"0": {"busy_fraction": 0.4}}})
    assert full["s/latency_ms_p95".replace("s/", "serving/s/")] == 2.0
    assert full["serving/s/node0_busy_fraction"] == 0.4 and full["serving/s/emulated_queued_ms_p95"] == 3.0
