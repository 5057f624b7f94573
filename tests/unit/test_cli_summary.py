"""The demo's per-device summary: means over each device's cycles, not first-vs-last."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from eclm.campaign.messages import DeviceMetrics, MergeOutcome
from eclm.campaign.results import CycleResult
from eclm.cli import _summary, deliveries_note, device_summary


def cycle(metrics: dict[str, dict], up: dict[str, int], down: dict[str, int]) -> CycleResult:
    return CycleResult(round=1, devices=sorted(metrics), device_metrics={n: DeviceMetrics(**m) for n, m in metrics.items()},
                       bytes_up=up, bytes_down=down, merge=MergeOutcome(decision="accept", reason="ok"),
                       cloud_val_acc=0.9)


HISTORY = [
    cycle({"a": {"acc_before": 0.9, "acc_after": 0.95, "params": 100, "forgetting": None},
           "b": {"acc_before": 0.2, "acc_after": 0.6, "params": 50, "forgetting": None}},
          {"a": 1_000_000, "b": 500_000}, {"a": 2_000_000, "b": 1_000_000}),
    # A harsh new environment for "a": low accuracy, but adaptation still gains.
    cycle({"a": {"acc_before": 0.1, "acc_after": 0.35, "params": 80, "forgetting": 0.05}},
          {"a": 1_000_000}, {"a": 500_000}),
]


def test_means_are_over_the_cycles_a_device_took_part_in():
    rows = {r["device"]: r for r in device_summary(HISTORY, ["a", "b", "c"])}
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert a["cycles"] == 2 and a["params"] == 80  # the last sub-model
    assert a["acc_before"] == pytest.approx(0.5) and a["acc_after"] == pytest.approx(0.65)
    assert a["gain"] == pytest.approx(0.15)  # first-before vs last-after (0.9 -> 0.35) would read as a loss
    assert a["forgetting"] == pytest.approx(0.05)  # cycles without a previous environment are skipped
    assert a["mb_up"] == pytest.approx(2.0) and a["mb_down"] == pytest.approx(2.5)
    assert b["cycles"] == 1 and b["gain"] == pytest.approx(0.4) and b["forgetting"] is None
    assert c["cycles"] == 0 and c["acc_before"] is None and c["gain"] is None and c["mb_up"] == 0


def test_printed_table_has_a_row_per_device():
    out = io.StringIO()
    _summary(SimpleNamespace(history=HISTORY, names=["a", "b", "c"]), out)
    lines = out.getvalue().splitlines()
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("a", "b", "c")}
    assert "65.0%" in rows["a"]
    assert "+15.0" in rows["a"] and "+5.0" in rows["a"]  # gain and forgetting as signed points, not %
    assert "15.0%" not in rows["a"]
    assert "gain pts" in out.getvalue() and "forget pts" in out.getvalue()
    assert "percentage points" in out.getvalue()  # the glossary under the table
    assert "no successful cycle" in rows["c"]
    assert "merges: ['accept', 'accept']" in out.getvalue()


def test_the_cycle_line_counts_what_the_packages_carried():
    assert deliveries_note({"a": "first", "b": "delta", "c": "first"}) == " (2 first, 1 delta)"
    assert deliveries_note({}) == ""
