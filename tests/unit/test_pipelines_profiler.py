"""Resource profile -> sub-model budget, checked against hand-computed numbers."""

from __future__ import annotations

import pytest

from eclm.pipelines.profiler import budget_from_resources, measure_gflops, measure_resources

KW = {"full_params": 1_000_000, "batch_size": 16, "target_step_seconds": 0.5, "max_transfer_seconds": 30.0}


@pytest.mark.parametrize(
    ("resources", "limits"),
    [
        ({}, {}),
        ({"memory_mb": None, "gflops": None}, {}),
        # 64 MB = 67_108_864 B; half for weights at 16 B/param; half for 2 x 16 activations.
        ({"memory_mb": 64}, {"params": 2_097_152, "activation_bytes": 1_048_576}),
        ({"memory_mb": 16}, {"params": 524_288, "activation_bytes": 262_144}),
        # 20 GFLOP/s x 0.5 s / (3 x 16) = 208_333_333.33 FLOPs per sample forward.
        ({"gflops": 20}, {"flops": 208_333_333.333}),
        # 50 Mbit/s = 6.25 MB/s, x 30 s.
        ({"bandwidth_mbps": 50}, {"payload_bytes": 187_500_000}),
        ({"params_fraction": 0.5}, {"params": 500_000}),
        # Fraction caps the memory-derived limit: min(2_097_152, 300_000).
        ({"memory_mb": 64, "params_fraction": 0.3}, {"params": 300_000, "activation_bytes": 1_048_576}),
        # Memory below the fraction cap: min(524_288, 900_000).
        ({"memory_mb": 16, "params_fraction": 0.9}, {"params": 524_288, "activation_bytes": 262_144}),
    ],
)
def test_budget_from_resources(resources, limits):
    profile = budget_from_resources("dev", resources, **KW)
    assert profile.name == "dev"
    got = profile.limits()
    assert set(got) == set(limits)
    for dim, value in limits.items():
        assert got[dim] == pytest.approx(value, rel=1e-9), dim


def test_batch_size_and_time_budgets_enter_the_formulas():
    base = budget_from_resources("d", {"memory_mb": 64, "gflops": 20, "bandwidth_mbps": 50}, **KW).limits()
    other = budget_from_resources("d", {"memory_mb": 64, "gflops": 20, "bandwidth_mbps": 50},
                                  **dict(KW, batch_size=32, target_step_seconds=1.0, max_transfer_seconds=60.0)).limits()
    assert other["params"] == base["params"]  # weights do not depend on the batch
    assert other["activation_bytes"] == pytest.approx(base["activation_bytes"] / 2)
    assert other["flops"] == pytest.approx(base["flops"])  # double time, double batch
    assert other["payload_bytes"] == pytest.approx(2 * base["payload_bytes"])


def test_measurements_are_positive_numbers():
    assert measure_gflops(size=64, repeats=2) > 0
    res = measure_resources()
    assert set(res) == {"memory_mb", "gflops"} and all(v > 0 for v in res.values())


def test_module_sparse_memory_rule_holds_weights_in_half_and_bounds_one_adaptation_by_all_of_it():
    dense = budget_from_resources("d", {"memory_mb": 16}, **KW)
    sparse = budget_from_resources("d", {"memory_mb": 16}, **KW, sparse=True)
    # 16 MB: half for float32 weights alone (4 B/param), four times the dense rule's 16 B/param
    assert sparse.max_params == pytest.approx(0.5 * 16 * 2**20 / 4) == 4 * dense.max_params
    assert sparse.max_activation_bytes == dense.max_activation_bytes  # backward may still reach the stem
    assert sparse.max_train_memory == 16 * 2**20 and dense.max_train_memory is None
    assert "train_memory" not in sparse.limits()  # not a cost-table dimension
