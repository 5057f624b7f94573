"""Node and link emulation: pure arithmetic and the sleep requests (a fake sleep, no timing)."""

import math

import pytest

from eclm.serving import DutyCycle, LinkDelay, PartitionProblem


class FakeSleep:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.mark.parametrize("share,t", [(1.0, 0.2), (0.6, 0.2), (0.4, 0.05), (0.1, 1.0)])
def test_duty_cycle_arithmetic(share, t):
    dc = DutyCycle(share)
    assert dc.emulated_seconds(t) == pytest.approx(t / share)
    assert dc.extra_seconds(t) == pytest.approx(t * (1 / share - 1))
    assert dc.extra_seconds(t) + t == pytest.approx(dc.emulated_seconds(t))


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_duty_cycle_apply_sleeps_the_idle_part_only(share):
    sleep = FakeSleep()
    slept = DutyCycle(share, sleep=sleep).apply(0.1)
    assert slept == pytest.approx(0.1 * (1 / share - 1))
    assert sleep.calls == ([] if share == 1.0 else [pytest.approx(slept)])


def test_duty_cycle_run_returns_result_and_sleeps_proportionally():
    sleep = FakeSleep()
    result, emulated = DutyCycle(0.5, sleep=sleep).run(sum, [1, 2, 3])
    assert result == 6
    assert len(sleep.calls) == 1
    # Slept exactly as long as the work took: at share 0.5 the emulated time is twice the work.
    assert emulated == pytest.approx(2 * sleep.calls[0])


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_duty_cycle_rejects_bad_share(share):
    with pytest.raises(ValueError, match="cpu_share"):
        DutyCycle(share)


@pytest.mark.parametrize("bw,lat,nbytes", [(1e6, 0.01, 5e5), (12.5e6, 0.0, 1e6), (math.inf, 0.02, 1e9)])
def test_link_delay_arithmetic_and_apply(bw, lat, nbytes):
    sleep = FakeSleep()
    link = LinkDelay(bw, lat, sleep=sleep)
    expected = lat + nbytes / bw
    assert link.emulated_seconds(nbytes) == pytest.approx(expected)
    assert link.apply(nbytes) == pytest.approx(expected)
    assert sleep.calls == ([pytest.approx(expected)] if expected > 0 else [])


def test_link_delay_agrees_with_the_partitioner_cost_model():
    problem = PartitionProblem([[1.0], [1.0]], [0.0], 0.0, [3e6], [0.004])
    assert LinkDelay(3e6, 0.004).emulated_seconds(7e5) == pytest.approx(problem.transfer_time(0, 1, 7e5))


@pytest.mark.parametrize("args,field", [((0.0, 0.0), "bandwidth"), ((1e6, -1.0), "latency"),
                                        ((1e6, math.inf), "latency")])
def test_link_delay_rejects_bad_parameters(args, field):
    with pytest.raises(ValueError, match=field):
        LinkDelay(*args)


def test_negative_inputs_rejected():
    with pytest.raises(ValueError, match="nbytes"):
        LinkDelay(1e6).emulated_seconds(-1)
    with pytest.raises(ValueError, match="compute_seconds"):
        DutyCycle(0.5).emulated_seconds(-0.1)
