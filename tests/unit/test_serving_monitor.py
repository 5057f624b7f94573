"""ResourceMonitor: EWMA smoothing, change events, psutil sampling with injected CPU readings."""

import math

import pytest

from eclm.serving import NodeResources, ResourceEvent, ResourceMonitor

GIB = 1024**3


def res(load=0.0, share=1.0, avail=GIB, bw=1e7, lat=0.01) -> NodeResources:
    return NodeResources(cpu_share=share, cpu_load=load, mem_total=2 * GIB, mem_available=avail,
                         bandwidth=bw, latency=lat)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_observe_is_an_ewma(alpha):
    mon = ResourceMonitor(alpha=alpha)
    mon.observe(res(load=0.2))
    snap = mon.observe(res(load=0.6))
    assert snap.cpu_load == pytest.approx(alpha * 0.6 + (1 - alpha) * 0.2)
    snap = mon.observe(res(load=1.0))
    assert snap.cpu_load == pytest.approx(alpha * 1.0 + (1 - alpha) * (alpha * 0.6 + (1 - alpha) * 0.2))


def test_first_poll_sets_baseline_and_small_changes_are_silent():
    mon = ResourceMonitor(alpha=1.0, threshold=0.25)
    mon.observe(res(load=0.0))
    assert mon.poll() == []
    mon.observe(res(load=0.2))  # effective speed 1.0 -> 0.8: -20%, under threshold
    assert mon.poll() == []


def test_speed_drop_beyond_threshold_emits_one_event():
    mon = ResourceMonitor(alpha=1.0, threshold=0.25)
    mon.observe(res(load=0.0))
    mon.poll()
    mon.observe(res(load=0.5))
    events = mon.poll()
    assert [e.quantity for e in events] == ["effective_speed"]
    assert events[0].relative_change == pytest.approx(-0.5)
    assert mon.poll() == []  # reported value is now the reference


def test_slow_drift_accumulates_until_it_crosses_the_threshold():
    mon = ResourceMonitor(alpha=1.0, threshold=0.25)
    mon.observe(res(load=0.0))
    mon.poll()
    fired_at = None
    for step, load in enumerate([0.1, 0.2, 0.3]):  # -10%, -20%, -30% against the reference
        mon.observe(res(load=load))
        if mon.poll():
            fired_at = step
            break
    assert fired_at == 2


def test_smoothing_delays_events_compared_with_raw_readings():
    raw, smooth = ResourceMonitor(alpha=1.0), ResourceMonitor(alpha=0.2)
    for mon in (raw, smooth):
        mon.observe(res(load=0.0))
        mon.poll()
        mon.observe(res(load=0.6))
    assert any(e.quantity == "effective_speed" for e in raw.poll())
    assert not any(e.quantity == "effective_speed" for e in smooth.poll())  # 1.0 -> 0.88 only


def test_block_latency_is_smoothed_and_reported():
    mon = ResourceMonitor(alpha=0.5, threshold=0.25)
    assert mon.record_block_latency(3, 0.010) == pytest.approx(0.010)
    assert mon.record_block_latency(3, 0.030) == pytest.approx(0.020)
    assert mon.block_latencies() == {3: pytest.approx(0.020)}
    assert mon.poll() == []
    mon.record_block_latency(3, 0.040)  # smoothed 0.030: +50%
    events = mon.poll()
    assert [e.quantity for e in events] == ["block_latency[3]"]
    assert events[0].previous == pytest.approx(0.020) and events[0].current == pytest.approx(0.030)


def test_infinite_bandwidth_does_not_poison_the_average():
    mon = ResourceMonitor(alpha=0.3)
    mon.observe(res(bw=math.inf))
    mon.poll()
    snap = mon.observe(res(bw=1e6))
    assert snap.bandwidth == 1e6
    events = {e.quantity: e for e in mon.poll()}
    assert events["bandwidth"].relative_change == -math.inf


def test_sample_uses_injected_cpu_reading_and_memory_limit():
    mon = ResourceMonitor(alpha=1.0, cpu_share=0.4, mem_limit=512 * 1024**2, cpu_percent=lambda: 50.0)
    snap = mon.sample()
    assert snap.cpu_share == 0.4 and snap.cpu_load == pytest.approx(0.5)
    assert snap.effective_speed == pytest.approx(0.2)
    assert 0 <= snap.mem_available <= snap.mem_total <= 512 * 1024**2


def test_sample_with_real_psutil_gives_valid_resources():
    snap = ResourceMonitor().sample()
    assert 0.0 <= snap.cpu_load <= 1.0 and 0 < snap.mem_available <= snap.mem_total


@pytest.mark.parametrize("kwargs,field", [
    (dict(cpu_share=0.0), "cpu_share"),
    (dict(cpu_load=1.5), "cpu_load"),
    (dict(mem_available=3 * GIB), "mem_available"),
    (dict(bandwidth=0.0), "bandwidth"),
    (dict(latency=-1.0), "latency"),
])
def test_node_resources_validation(kwargs, field):
    base = dict(cpu_share=1.0, cpu_load=0.0, mem_total=2 * GIB, mem_available=GIB)
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        NodeResources(**base)


@pytest.mark.parametrize("kwargs,field", [(dict(alpha=0.0), "alpha"), (dict(alpha=1.5), "alpha"),
                                          (dict(threshold=0.0), "threshold"), (dict(mem_limit=0), "mem_limit")])
def test_monitor_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ResourceMonitor(**kwargs)


def test_bad_readings_raise():
    mon = ResourceMonitor()
    with pytest.raises(TypeError, match="NodeResources"):
        mon.observe({"cpu_load": 0.5})
    with pytest.raises(ValueError, match="block"):
        mon.record_block_latency(-1, 0.1)
    with pytest.raises(ValueError, match="seconds"):
        mon.record_block_latency(0, math.nan)


def test_event_relative_change_sign():
    assert ResourceEvent("latency", 0.01, 0.02).relative_change == pytest.approx(1.0)
    assert ResourceEvent("latency", 0.0, 0.02).relative_change == math.inf
