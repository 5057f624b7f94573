"""EdgeSplit with the paper's per-iteration objective: optimality vs brute force, memory, bandwidth,
errors; the epoch objective is tested in test_split_edgesplit_epoch.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from eclm.split import (
    BlockCosts,
    SplitDevice,
    best_common_cut_plan,
    brute_force_plan,
    plan_edgesplit,
    uniform_cut_plan,
)

ITER = {"objective": "iteration"}  # the paper's per-iteration model


def random_instance(seed: int, num_devices: int = 4, num_blocks: int = 6):
    """Random heterogeneous instance; resampled until every device fits some cut."""
    rng = np.random.default_rng(seed)
    while True:
        costs = BlockCosts(
            forward_flops=rng.uniform(1e6, 1e8, num_blocks),
            activation_bytes=rng.uniform(1e3, 1e5, num_blocks + 1),
            param_bytes=rng.uniform(1e5, 1e6, num_blocks),
            train_activation_bytes=rng.uniform(1e3, 3e4, num_blocks),
        )
        devices = [
            SplitDevice(
                speed=10 ** rng.uniform(8, 10.5),
                memory=rng.uniform(1.5e6, 8e6),
                batch_size=int(rng.integers(8, 33)),
                latency=rng.uniform(0, 0.01),
                name=f"dev{i}",
            )
            for i in range(num_devices)
        ]
        bandwidth, server = 10 ** rng.uniform(5, 8), 10 ** rng.uniform(10, 12)
        try:
            best_common_cut_plan(costs, devices, bandwidth, server, **ITER)
        except ValueError:
            continue
        return costs, devices, bandwidth, server


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ratio", [1.0, 8.0])
def test_alternating_matches_brute_force_and_beats_baselines(seed: int, ratio: float) -> None:
    costs, devices, bandwidth, server = random_instance(seed)

    plan = plan_edgesplit(costs, devices, bandwidth, server, compression_ratio=ratio, **ITER)
    exact = brute_force_plan(costs, devices, bandwidth, server, compression_ratio=ratio, **ITER)
    common = best_common_cut_plan(costs, devices, bandwidth, server, compression_ratio=ratio, **ITER)

    assert plan.round_time <= exact.round_time * (1 + 1e-6)
    assert exact.round_time <= plan.round_time * (1 + 1e-9)  # brute force is the optimum
    assert plan.round_time <= common.round_time * (1 + 1e-12)
    for cut in set(common.cuts):
        assert plan.round_time <= uniform_cut_plan(costs, devices, bandwidth, server, cut).round_time


@pytest.mark.parametrize("seed", range(4))
def test_plans_respect_memory_and_split_all_bandwidth(seed: int) -> None:
    costs, devices, bandwidth, server = random_instance(seed, num_devices=3)

    plans = [
        plan_edgesplit(costs, devices, bandwidth, server, **ITER),
        brute_force_plan(costs, devices, bandwidth, server, **ITER),
        best_common_cut_plan(costs, devices, bandwidth, server, **ITER),
    ]

    for plan in plans:
        assert sum(plan.bandwidths) == pytest.approx(bandwidth, rel=1e-9)
        assert plan.round_time == max(plan.device_times)
        for cut, dev in zip(plan.cuts, devices, strict=True):
            assert costs.device_memory(cut, dev.batch_size) <= dev.memory
    # Equalised bandwidth: every device that sends finishes at the same time.
    assert max(plans[0].device_times) == pytest.approx(min(plans[0].device_times), rel=1e-6)


def two_tier_instance(slow_memory: float = 1e9):
    """Deeper cuts send less; one fast device, one slow one, a thin shared link."""
    costs = BlockCosts(
        forward_flops=[1e8] * 4,
        activation_bytes=[4e4, 3.2e4, 1.6e4, 4e3, 1e2],
        param_bytes=[1e5] * 4,
        train_activation_bytes=[1e4] * 4,
    )
    devices = [
        SplitDevice(speed=1e11, memory=1e9, batch_size=16, name="fast"),
        SplitDevice(speed=1e9, memory=slow_memory, batch_size=16, name="weak"),
    ]
    return costs, devices, 2e5, 1e12


def test_heterogeneous_cuts_beat_any_common_cut() -> None:
    costs, devices, bandwidth, server = two_tier_instance()

    plan = plan_edgesplit(costs, devices, bandwidth, server, **ITER)
    common = best_common_cut_plan(costs, devices, bandwidth, server, **ITER)

    assert plan.cuts[0] > plan.cuts[1]  # the fast device takes more blocks
    assert plan.round_time < 0.9 * common.round_time


def test_compression_never_slows_the_plan() -> None:
    costs, devices, bandwidth, server = two_tier_instance()

    plain = plan_edgesplit(costs, devices, bandwidth, server, **ITER)
    compressed = plan_edgesplit(costs, devices, bandwidth, server, compression_ratio=10.0, **ITER)

    assert compressed.round_time < plain.round_time


def test_device_without_any_feasible_cut_is_named() -> None:
    costs, devices, bandwidth, server = two_tier_instance(slow_memory=1e4)

    with pytest.raises(ValueError, match=r"device 'weak' \(index 1\) has memory 10000 bytes.*needs 260000"):
        plan_edgesplit(costs, devices, bandwidth, server, **ITER)


def test_memory_limit_forces_shallower_cut() -> None:
    costs, devices, bandwidth, server = two_tier_instance()
    free = plan_edgesplit(costs, devices, bandwidth, server, **ITER)
    fast_cut = free.cuts[0]
    limit = costs.device_memory(fast_cut - 1, 16)  # just enough for one block less
    tight = [SplitDevice(speed=1e11, memory=limit, batch_size=16, name="fast"), devices[1]]

    plan = plan_edgesplit(costs, tight, bandwidth, server, **ITER)

    assert plan.cuts[0] <= fast_cut - 1
    assert plan.round_time >= free.round_time


def test_uniform_cut_rejects_cut_that_does_not_fit() -> None:
    costs, devices, bandwidth, server = two_tier_instance(slow_memory=3e5)

    with pytest.raises(ValueError, match="cut 4 does not fit device 'weak'"):
        uniform_cut_plan(costs, devices, bandwidth, server, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"total_bandwidth": 0.0}, "total_bandwidth"),
        ({"server_speed": -1.0}, "server_speed"),
        ({"compression_ratio": 0.0}, "compression_ratio"),
        ({"max_iters": 0}, "max_iters"),
        ({"devices": []}, "devices"),
        ({"objective": "epoch"}, "needs step_batches"),
        ({"objective": "fastest"}, "objective must be"),
    ],
)
def test_planner_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    costs, devices, bandwidth, server = two_tier_instance()
    args = {"devices": devices, "total_bandwidth": bandwidth, "server_speed": server, **ITER} | kwargs

    with pytest.raises(ValueError, match=message):
        plan_edgesplit(costs, **args)


def test_cost_helpers_partition_the_chain() -> None:
    costs = BlockCosts([1.0, 2.0, 3.0], [8, 4, 2, 1], [10, 20, 30], [1, 2, 3], backward_factor=2.0)

    for cut in costs.cuts:
        assert costs.device_flops(cut) + costs.server_flops(cut) == pytest.approx(18.0)
        assert costs.cut_bytes(cut) == [8, 4, 2, 1][cut]
    assert costs.device_memory(2, batch=4) == 30 + 4 * 3
    assert list(costs.cuts) == [1, 2, 3]
    assert costs.exchange_bytes(3) == 0.0  # no state bytes given: the exchange is not counted
    assert replace(costs, state_bytes=[5, 6, 7]).exchange_bytes(2) == 11
    calls = replace(costs, call_flops=[1, 2, 4])
    assert [calls.device_call_flops(c) + calls.server_call_flops(c) for c in calls.cuts] == [7, 7, 7]
    assert calls.device_call_flops(2) == 3 and costs.server_call_flops(1) == 0.0


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("activation_bytes", {"activation_bytes": [1, 1]}),
        ("param_bytes", {"param_bytes": [1]}),
        ("forward_flops", {"forward_flops": [1, -1, 1]}),
        ("train_activation_bytes", {"train_activation_bytes": [1, float("nan"), 1]}),
        ("backward_factor", {"backward_factor": -1.0}),
        ("state_bytes", {"state_bytes": [1, 1]}),
        ("call_flops", {"call_flops": [1, -1, 1]}),
    ],
)
def test_block_costs_validation_names_field(field: str, kwargs: dict) -> None:
    base = {
        "forward_flops": [1, 1, 1],
        "activation_bytes": [1, 1, 1, 1],
        "param_bytes": [1, 1, 1],
        "train_activation_bytes": [1, 1, 1],
    }

    with pytest.raises(ValueError, match=field):
        BlockCosts(**(base | kwargs))


@pytest.mark.parametrize("cut", [0, 4, 1.5])
def test_block_costs_reject_out_of_range_cut(cut) -> None:
    costs = BlockCosts([1, 1, 1], [1, 1, 1, 1], [1, 1, 1], [1, 1, 1])

    with pytest.raises(ValueError, match="cut must be"):
        costs.device_flops(cut)
