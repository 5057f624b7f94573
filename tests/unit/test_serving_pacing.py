"""NodePacer: node seconds from CPU time, deadline pacing, link hops (fake clocks, no real sleeping)."""

import math

import pytest

from eclm.serving import NodePacer


class FakeTime:
    """Wall clock, thread CPU clock and sleep, advanced by hand."""

    def __init__(self):
        self.wall = 100.0
        self.cpu = 5.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall += seconds

    def work(self, cpu: float, waited: float = 0.0):
        """A function doing ``cpu`` s of CPU work after waiting ``waited`` s for a core."""
        def fn(x):
            self.cpu += cpu
            self.wall += cpu + waited
            return x + 1
        return fn


def pacer(share=0.5, scale=1.0, emulate=True, bandwidth=1e6, latency=0.001):
    t = FakeTime()
    p = NodePacer(share, bandwidth, latency, emulate=emulate, scale=scale, sleep=t.sleep,
                  clock=lambda: t.wall, cpu_clock=lambda: t.cpu)
    return p, t


@pytest.mark.parametrize("share,scale,cpu", [(1.0, 1.0, 0.01), (0.6, 1.0, 0.01), (0.4, 0.5, 0.02), (0.1, 1.0, 0.003)])
def test_node_seconds_are_cpu_time_over_the_effective_share(share, scale, cpu):
    p, t = pacer(share, scale)
    result, node_s, used = p.timed(t.work(cpu, waited=0.05), 1)
    assert result == 2
    assert used == pytest.approx(cpu)
    # Host waiting (0.05 s) does not count: only the work, stretched by the share.
    assert node_s == pytest.approx(cpu / (share * scale))


def test_without_emulation_block_time_is_wall_time_and_nothing_sleeps():
    p, t = pacer(0.4, emulate=False)
    _, node_s, _ = p.timed(t.work(0.01, waited=0.02), 0)
    assert node_s == pytest.approx(0.03)
    assert p.pace_until(t.wall - 1.0, 5.0) == 0.0 and t.slept == []


@pytest.mark.parametrize("elapsed,target", [(0.01, 0.05), (0.0, 0.2), (0.3, 0.1)])
def test_pace_until_sleeps_only_the_remainder_to_the_deadline(elapsed, target):
    p, t = pacer()
    start = t.wall
    t.wall += elapsed
    slept = p.pace_until(start, target)
    assert slept == pytest.approx(max(target - elapsed, 0.0))
    assert t.wall == pytest.approx(start + max(target, elapsed))


@pytest.mark.parametrize("hops", [0, 1, 3])
def test_link_seconds_add_one_store_and_forward_transfer_per_hop(hops):
    p, _ = pacer(bandwidth=2e6, latency=0.002)
    assert p.link_seconds(4e6, hops) == pytest.approx(hops * (0.002 + 2.0))


def test_set_cpu_share_changes_the_speed():
    p, t = pacer(1.0)
    _, before, _ = p.timed(t.work(0.01), 0)
    p.set_cpu_share(0.25)
    _, after, _ = p.timed(t.work(0.01), 0)
    assert after == pytest.approx(4 * before)


@pytest.mark.parametrize("kwargs", [dict(share=0.0), dict(share=1.5), dict(scale=0.0), dict(scale=2.0),
                                    dict(bandwidth=0.0), dict(latency=-1.0), dict(latency=math.inf)])
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        pacer(**kwargs)


def test_invalid_hops_and_share_raise():
    p, _ = pacer()
    with pytest.raises(ValueError, match="hops"):
        p.link_seconds(10, -1)
    with pytest.raises(ValueError, match="cpu_share"):
        p.set_cpu_share(0.0)
