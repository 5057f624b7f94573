"""Re-partition decisions after node changes."""

import pytest

from eclm.serving import PartitionProblem, decide_repartition, dp_partition, monolithic_plan

REF = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def problem(speeds, node_memory=None) -> PartitionProblem:
    return PartitionProblem.from_speeds(REF, speeds, [1e3] * 6, 1e3, [1e9, 1e9], [0.0, 0.0],
                                        block_memory=[1.0] * 6, node_memory=node_memory)


def test_unchanged_nodes_keep_the_plan():
    p = problem([1.0, 0.6, 0.4])
    decision = decide_repartition(p, dp_partition(p))
    assert not decision.switch and decision.plan.boundaries == dp_partition(p).boundaries


def test_big_slowdown_switches_to_a_better_plan():
    before = problem([1.0, 1.0, 1.0])
    current = dp_partition(before)
    after = problem([1.0, 1.0, 0.1])  # node 2 lost 90% of its CPU
    decision = decide_repartition(after, current, min_gain=0.1)
    assert decision.switch
    assert decision.best_cost <= 0.9 * decision.current_cost
    assert decision.plan.bottleneck < decision.current_cost


@pytest.mark.parametrize("min_gain,switch", [(0.0, True), (0.3, True), (0.5, False)])
def test_min_gain_controls_switching(min_gain, switch):
    current = dp_partition(problem([1.0, 1.0, 1.0]))
    decision = decide_repartition(problem([1.0, 1.0, 0.4]), current, min_gain=min_gain)  # 5 s -> 3 s
    assert decision.switch is switch
    assert decision.best_cost < decision.current_cost


def test_plan_that_no_longer_fits_memory_is_replaced():
    current = monolithic_plan(problem([1.0, 1.0, 1.0]))
    decision = decide_repartition(problem([1.0, 1.0, 1.0], node_memory=[3.0, 6.0, 6.0]), current, min_gain=0.9)
    assert decision.switch and decision.plan.fits_memory


def test_mismatched_plan_and_bad_min_gain_raise():
    current = dp_partition(problem([1.0, 1.0, 1.0]))
    two_nodes = PartitionProblem([[1.0] * 6] * 2, [1.0] * 6, 1.0, [1e9], [0.0])
    with pytest.raises(ValueError, match="boundaries"):
        decide_repartition(two_nodes, current)
    with pytest.raises(ValueError, match="min_gain"):
        decide_repartition(problem([1.0, 1.0, 1.0]), current, min_gain=1.0)
