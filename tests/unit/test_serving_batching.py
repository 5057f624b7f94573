"""The planner's micro-batch choice: candidates, highest predicted rate, latency objective; no Ray."""

import pytest

from eclm.serving import PartitionProblem, evaluate_plan
from eclm.serving.batching import candidate_sizes, choose_micro_batch


@pytest.mark.parametrize("cap,expected", [(1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8))])
def test_candidates_are_powers_of_two_up_to_the_cap(cap, expected):
    assert candidate_sizes(cap) == expected


def plan_for(size: int, fixed: float, per_request: float):
    """A one-node plan whose micro-batch of ``size`` takes ``fixed + size * per_request`` seconds."""
    return evaluate_plan(PartitionProblem([[fixed + size * per_request]], [0.0], 0.0, [], []), (0, 1))


def test_largest_rate_wins_and_equal_rates_prefer_the_smaller_size():
    # A fixed 4 ms per micro-batch: the rate grows with the size.
    plans = {b: plan_for(b, 0.004, 0.001) for b in (1, 2, 4, 8)}
    choice = choose_micro_batch(plans)
    assert choice.size == 8 and choice.rates[8] == pytest.approx(8 / 0.012)
    # No fixed cost: every size has the same rate; the smallest has the lowest latency.
    flat = {b: plan_for(b, 0.0, 0.001) for b in (1, 2, 4, 8)}
    assert choose_micro_batch(flat).size == 1


def test_latency_objective_caps_the_size():
    plans = {b: plan_for(b, 0.004, 0.001) for b in (1, 2, 4, 8)}
    assert choose_micro_batch(plans, latency_slo_s=0.009).size == 4  # 8 ms at 4, 12 ms at 8
    impossible = choose_micro_batch(plans, latency_slo_s=0.001)
    assert impossible.size == 1 and "no size" in impossible.reason
    with pytest.raises(ValueError):
        choose_micro_batch({})
    with pytest.raises(ValueError):
        candidate_sizes(0)
