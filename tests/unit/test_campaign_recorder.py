"""What the MLflow recorder writes per round: per-device series for small campaigns, aggregates
and one table per round for large ones (so 1000 devices do not mean 10,000 metric series)."""

from __future__ import annotations

import json

import pytest

from eclm.campaign.messages import CloudInfo, DeviceMetrics, MergeOutcome
from eclm.campaign.results import CycleResult
from eclm.campaign.store import RoundRecord
from eclm.campaign.tracking_recorder import TrackingRecorder, device_table
from eclm.config import PlatformConfig
from eclm.tracking import CampaignTracker

INFO = CloudInfo(model_id="m", arch={}, layer_names=("l0",), layer_sizes=(2,), allows_empty=(True,), costs={},
                 full_cost={"params": 1.0}, num_classes=3, version=0, proxy_train=1, proxy_val=1)


def result(n: int) -> CycleResult:
    names = [f"d{i}" for i in range(n)]
    metrics = {d: DeviceMetrics(acc_before=0.2 + 0.5 * i / n, acc_after=0.4 + 0.5 * i / n, params=10.0)
               for i, d in enumerate(names[:-1])}  # the last device failed
    return CycleResult(round=1, devices=names, device_metrics=metrics, failures={names[-1]: "adapt: dead"},
                       merge=MergeOutcome(decision="accept", reason="ok", accepted=tuple(metrics), version=1),
                       cloud_val_acc=0.9, bytes_up=dict.fromkeys(names, 100), bytes_down=dict.fromkeys(names, 300))


@pytest.mark.parametrize(("devices", "per_device"), [(4, True), (50, False)])
def test_small_campaigns_get_device_series_and_large_ones_aggregates_and_a_table(tmp_path, devices, per_device):
    cfg = PlatformConfig.from_dict({"data": {"num_devices": devices}, "workdir": str(tmp_path),
                                    "tracking": {"enabled": False, "per_device_metrics_max": 32}})
    tracker = CampaignTracker.from_config(cfg.tracking, workdir=tmp_path)
    tracker.start({}, run_name="rec")
    res = result(devices)

    TrackingRecorder(tracker, cfg).record_cycle(res, {}, INFO, [RoundRecord(round=1, cloud_val_acc=0.9)])

    records = [json.loads(line) for line in tracker.journal_path.read_text().splitlines()]
    keys = {k for r in records if r["kind"] == "metrics" for k in r["data"]}
    artifacts = {r["data"]["artifact_path"] for r in records if r["kind"] == "artifact"}
    assert {"cloud/val_acc", "merge/decision", "devices/failed", "devices/mean_acc_after"} <= keys
    if per_device:
        assert {f"device/d{i}/bytes_up" for i in range(devices)} <= keys
        assert "rounds/round_001/devices.table.json" not in artifacts
    else:
        assert not any(k.startswith("device/") for k in keys)
        assert {"devices/acc_after/p10", "devices/acc_after/p90", "devices/acc_after/min"} <= keys
        assert "rounds/round_001/devices.table.json" in artifacts
        assert len(keys) < 60  # bounded, whatever the device count


def test_the_device_table_has_a_row_per_device_worst_first_with_failures():
    table = device_table(result(5))
    assert table["columns"][0] == "device" and len(table["data"]) == 5
    assert table["data"][0][0] == "d4" and table["data"][0][-1] == "adapt: dead"  # failed: no accuracy, first
    after = [row[2] for row in table["data"][1:]]
    assert after == sorted(after)
