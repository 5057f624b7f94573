"""Asynchronous hand-off and wire codecs in the cost model, the planner, the replay and the breakdown."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from eclm.serving import (
    BatchTrace,
    NodeProfile,
    PartitionProblem,
    RequestLedger,
    ServingConfig,
    brute_force_partition,
    build_problem,
    dp_partition,
    evaluate_plan,
    make_plan,
    replay_emulated,
    routes_for,
    summarize,
)
from eclm.serving.breakdown import capacity_bounds, stage_breakdown
from eclm.serving.session_stats import stage_hops
from tests.unit.test_serving_partition import random_problem


@pytest.mark.parametrize("objective", ["throughput", "latency"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_with_overlapped_transfers_matches_brute_force(objective, seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        problem = replace(random_problem(rng, memory=bool(seed % 2)), overlap_transfers=True)
        try:
            dp = dp_partition(problem, objective)
        except ValueError:
            continue
        bf = brute_force_partition(problem, objective)
        if objective == "throughput":
            assert dp.bottleneck == pytest.approx(bf.bottleneck, rel=1e-9)
        assert dp.latency == pytest.approx(bf.latency, rel=1e-9)


def test_an_overlapped_link_is_its_own_step_and_latency_still_adds_up():
    # Two nodes, 2 blocks of 1 s each; the cut carries 1 MB over a 1 MB/s link: 1 s.
    problem = PartitionProblem([[1.0, 1.0], [1.0, 1.0]], [1e6, 0.0], 0.0, [1e6], [0.0])
    sync, overlapped = (evaluate_plan(replace(problem, overlap_transfers=o), (0, 1, 2)) for o in (False, True))
    assert sync.bottleneck == pytest.approx(2.0) and overlapped.bottleneck == pytest.approx(1.0)
    assert sync.latency == overlapped.latency == pytest.approx(3.0)
    # float16 on the wire halves the transfer.
    assert evaluate_plan(replace(problem, wire_ratio=0.5), (0, 1, 2)).stages[0].transfer_time == pytest.approx(0.5)
    with pytest.raises(ValueError, match="wire_ratio"):
        replace(problem, wire_ratio=0.0)


def _profiles(shares, act):
    blocks = (0.004, 0.004, 0.004, 0.004)
    return [NodeProfile(i, s, tuple(t / s for t in blocks), 1000.0, act, (1.0,) * 4) for i, s in enumerate(shares)]


@pytest.mark.parametrize("link_bound", [True, False])
def test_auto_codec_compresses_only_where_links_limit_the_pipeline(link_bound):
    shares = (0.5, 0.5)
    # 32 ms of compute on one node, 16 ms per node at the even cut. Cuts of 600 kB cost 49 ms on the
    # link at float32 (so the float32 optimum is the whole model on one node) and 25 ms at float16
    # (a split beats 32 ms); cuts of 6 kB cost 1.5 ms, far below any compute step.
    act = (6e5,) * 4 if link_bound else (6e3,) * 4
    cfg = ServingConfig(node_cpu_shares=list(shares), node_memory_bytes=None, link_bandwidth_bytes_per_s=12.5e6)
    problem = build_problem(_profiles(shares, act), cfg)
    plan = make_plan(problem, cfg)
    plain = make_plan(problem, cfg.model_copy(update={"activation_codec": "float32"}))
    if link_bound:
        assert plan.codec == "float16" and plan.bottleneck < 0.95 * plain.bottleneck
    else:
        assert plan.codec == "float32" and plan == plain
    routes = routes_for(plan)
    # The codec applies to hops between stages; the last stage returns float32 to the coordinator.
    assert [r.codec for r in routes] == [plan.codec] * (len(routes) - 1) + ["float32"]
    forced = make_plan(problem, cfg.model_copy(update={"activation_codec": "int8"}))
    assert forced.codec == "int8"
    assert make_plan(problem, cfg, "proportional").codec == plan.codec  # the same rule for every partitioner


def test_replay_runs_overlapped_links_beside_compute():
    stages = [{"node": 0, "compute_s": 1.0, "link_s": 1.0, "overlap": True},
              {"node": 1, "compute_s": 1.0, "link_s": 0.0, "overlap": True}]
    hops = stage_hops(stages)
    assert hops == ((0, 1.0), (("link", 0), 1.0), (1, 1.0))
    fast = replay_emulated([BatchTrace(1, hops)] * 10, max_in_flight=10)
    slow = replay_emulated([BatchTrace(1, stage_hops([{**s, "overlap": False} for s in stages]))] * 10, 10)
    assert fast.steady_throughput_rps == pytest.approx(1.0) and slow.steady_throughput_rps == pytest.approx(0.5)


def test_capacity_bounds_sum_nodes_and_respect_block_granularity():
    # Node 1 is twice as slow. Blocks 3 + 1 s on node 0: any contiguous cut leaves >= 2 s somewhere.
    problem = PartitionProblem([[3.0, 1.0], [6.0, 2.0]], [1e9, 0.0], 0.0, [1.0], [5.0], stage_overhead=[1.0, 1.0])
    bounds = capacity_bounds(problem, micro_batch_size=2)
    assert bounds["sum_rps"] == pytest.approx(2 / 4 + 2 / 8)
    # Best contiguous cut with free links and no overhead: [3 s on node 0 | 2 s on node 1] -> 3 s.
    assert bounds["chain_rps"] == pytest.approx(2 / 3.0)
    assert bounds["granularity"] == pytest.approx((2 / 3) / 0.75)


def test_stage_breakdown_separates_compute_links_and_hand_off():
    led = RequestLedger(8, 1, 0, (1,))
    for b in range(3):
        rid = led.submit(torch.zeros(1), now=0.0)
        batch = led.take_batch(now=10.0 * b)
        t0 = 10.0 * b
        stages = [
            {"batch_id": batch.batch_id, "node": 0, "start": 0, "stop": 2, "compute_s": 0.004, "codec_s": 0.001,
             "link_s": 0.002, "cpu_s": 0.001, "wall_s": 0.004, "wait_s": 0.0, "started_at": t0 + 0.001,
             "finished_at": t0 + 0.005, "block_s": [0.001 * (b + 2), 0.001]},
            {"batch_id": batch.batch_id, "node": 1, "start": 2, "stop": 4, "compute_s": 0.006, "codec_s": 0.0,
             "link_s": 0.0, "cpu_s": 0.002, "wall_s": 0.009, "wait_s": 0.002, "started_at": t0 + 0.008,
             "finished_at": t0 + 0.017},
        ]
        led.complete(batch.batch_id, torch.zeros(1, 2), stages, now=t0 + 0.02)
        assert led.records[rid].ok
    hops = stage_breakdown(list(led.records.values()))
    assert [h["node"] for h in hops] == [0, 1] and hops[1]["blocks"] == "2-4"
    assert hops[0]["handoff_ms"] == pytest.approx(1.0) and hops[1]["handoff_ms"] == pytest.approx(3.0)
    assert hops[1]["wait_ms"] == pytest.approx(2.0) and hops[0]["link_ms"] == pytest.approx(2.0)
    assert hops[1]["return_ms"] == pytest.approx(3.0)
    # Per-block node seconds: first block (2, 3, 4 ms -> median 3) apart from the stage's total.
    assert hops[0]["first_block_ms"] == pytest.approx(3.0) and hops[0]["blocks_ms"] == pytest.approx(4.0)
    assert math.isnan(hops[1]["first_block_ms"]) and math.isnan(hops[1]["blocks_ms"])
    assert 0 < hops[1]["busy"] < 1 and not math.isnan(hops[0]["busy"])
    assert stage_breakdown([]) == []
    assert summarize(list(led.records.values()), 8)["requests"] == 3
