"""Device and link emulation: the documented time model, and delay() without real sleeping."""

from __future__ import annotations

import pytest

from eclm.split import ComputeModel, LinkModel, emulated_step_time


@pytest.mark.parametrize(
    ("bandwidth", "latency", "nbytes", "expected"),
    [(1e6, 0.0, 5e5, 0.5), (1e6, 0.02, 0.0, 0.02), (2.5e5, 0.01, 1e6, 4.01)],
)
def test_link_transfer_time(bandwidth: float, latency: float, nbytes: float, expected: float) -> None:
    assert LinkModel(bandwidth, latency).transfer_time(nbytes) == pytest.approx(expected)


@pytest.mark.parametrize(("device", "host", "real", "expected"), [(1e9, 4e9, 0.5, 2.0), (8e9, 4e9, 1.0, 0.5)])
def test_compute_model_scales_by_speed_ratio(
    device: float, host: float, real: float, expected: float
) -> None:
    model = ComputeModel.from_speeds(device_speed=device, host_speed=host)

    assert model.emulated_time(real) == pytest.approx(expected)


@pytest.mark.parametrize(("slowdown", "real", "slept"), [(4.0, 0.25, 0.75), (1.0, 0.3, 0.0), (0.5, 0.3, 0.0)])
def test_delay_sleeps_only_the_missing_time(slowdown: float, real: float, slept: float) -> None:
    calls: list[float] = []

    returned = ComputeModel(slowdown).delay(real, sleep=calls.append)

    assert returned == pytest.approx(slept)
    assert calls == ([pytest.approx(slept)] if slept > 0 else [])


def test_paced_block_measures_then_delays() -> None:
    ticks = iter([10.0, 10.2])
    calls: list[float] = []

    with ComputeModel(3.0).paced(clock=lambda: next(ticks), sleep=calls.append):
        pass

    assert calls == [pytest.approx(0.4)]


def test_step_time_adds_compute_and_both_messages() -> None:
    step = emulated_step_time(ComputeModel(2.0), LinkModel(1e3, 0.01), 0.1, bytes_up=500, bytes_down=1000)

    assert step == pytest.approx(0.2 + (0.01 + 0.5) + (0.01 + 1.0))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: LinkModel(0.0), "bandwidth"),
        (lambda: LinkModel(1.0, -1.0), "latency"),
        (lambda: LinkModel(1.0).transfer_time(-5), "nbytes"),
        (lambda: ComputeModel(0.0), "slowdown"),
        (lambda: ComputeModel.from_speeds(0.0, 1.0), "device_speed"),
        (lambda: ComputeModel(2.0).emulated_time(float("inf")), "real_seconds"),
    ],
)
def test_emulation_rejects_bad_values(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
