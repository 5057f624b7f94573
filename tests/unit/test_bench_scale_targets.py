"""Issue #13's scale figures from recorded runs (no Ray): idle-memory fit, served slices, targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.report import check_result
from benchmarks.suites._idle_memory import idle_fit
from benchmarks.suites._platform_bench import ScaleBenchConfig
from benchmarks.suites._scale_protocol import served_slice
from benchmarks.suites.scale import run_scale_benchmark
from benchmarks.targets import check_targets

NAMES = ("scale.devices_max", "scale.idle_mib_per_device", "scale.seconds_per_device_vs_compute_bound",
         "scale.merge_share_250")


def _idle(per_device: float, power: float = 1.0) -> dict:
    runs = [{"idle": n, "pss_mib": 2000.0 + per_device * n ** power, "observe_seconds": 1.0, "failures": 0}
            for n in (0, 50, 200, 1000)]
    return {"runs": runs, "fit": idle_fit(runs), "seconds": 10.0}


def _protocol(failures: int = 0) -> dict:
    cycle = {"devices": [f"dev{i:03d}" for i in range(250)], "seconds": 100.0, "observe_seconds": 40.0,
             "durations": {"adapt": 80.0, "merge": 5.0, "log": 10.0}, "failures": {}, "decision": "accept"}
    bad = dict(cycle, failures={f"dev{i:03d}": "ActorDied" for i in range(failures)})
    return {"registered": 1000, "served": 250, "pool_size": 2, "start_seconds": 3.0, "cycles": [cycle, bad],
            "peak_pss": 3 * 2**30, "peak_rss": 6 * 2**30,
            "compute": {"plain_seconds": [0.6, 0.8], "cores": 2, "seconds_per_device": 0.35}}


def test_idle_fit_recovers_slope_and_exponent() -> None:
    linear, quadratic = _idle(0.5)["fit"], _idle(0.001, power=2.0)["fit"]
    assert linear["mib_per_device"] == pytest.approx(0.5) and linear["exponent"] == pytest.approx(1.0)
    assert quadratic["exponent"] == pytest.approx(2.0)
    flat = idle_fit([{"idle": n, "pss_mib": 2000.0} for n in (0, 50, 200)])
    assert flat["mib_per_device"] == pytest.approx(0.0) and flat["exponent"] is None  # nothing grows


def test_served_slices_rotate_through_every_device() -> None:
    names = [f"d{i}" for i in range(5)]
    assert served_slice(names, 2, 0) == ["d0", "d1"] and served_slice(names, 2, 2) == ["d4", "d0"]
    assert served_slice(names, 9, 0) == names


def test_scale_result_carries_the_four_targets(tmp_path: Path) -> None:
    raw = {"baseline": {"rss": 0, "pss": 0}, "runs": [], "seconds": 1.0, "idle": _idle(0.5), "protocol": _protocol()}
    result = run_scale_benchmark(ScaleBenchConfig(), tmp_path, raw=raw)
    check_result(result)
    records = {t["name"]: t for t in check_targets(result["targets"])}
    assert tuple(records) == NAMES
    assert records["scale.devices_max"]["value"] == 1000
    assert records["scale.idle_mib_per_device"]["value"] == pytest.approx(0.5)
    assert records["scale.seconds_per_device_vs_compute_bound"]["value"] == pytest.approx(0.4 / 0.35)
    assert records["scale.merge_share_250"]["value"] == pytest.approx(0.05)


def test_failed_or_missing_parts_keep_their_targets_with_a_reason(tmp_path: Path) -> None:
    raw = {"baseline": {"rss": 0, "pss": 0}, "runs": [], "seconds": 1.0,
           "idle": {"status": "failed", "reason": "OSError: no smaps"}, "protocol": _protocol(failures=3)}
    records = {t["name"]: t for t in check_targets(run_scale_benchmark(ScaleBenchConfig(), tmp_path, raw=raw)["targets"])}
    assert records["scale.devices_max"]["value"] == 0  # a run with device failures does not count
    assert records["scale.idle_mib_per_device"]["value"] is None
    assert "no smaps" in records["scale.idle_mib_per_device"]["reason"]
    assert records["scale.merge_share_250"]["value"] == pytest.approx(0.05)  # measured, failures or not
