"""Fail-soft tracking: an unreachable or failing MLflow never raises, and the journal keeps every record."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from eclm.modules import modularize
from eclm.serving import ModelSource
from eclm.tracking import CampaignTracker, accuracy_over_rounds, close_figure, read_journal

UNREACHABLE = "http://127.0.0.1:1"  # port 1 on loopback: closed, refused at once, no network involved
CONFIG = {"seed": 1, "merge": {"rule": "validated"}}


@pytest.fixture(scope="module")
def source() -> ModelSource:
    model = modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 16)).eval()
    return ModelSource.from_modular(model)


def run_campaign(tracker: CampaignTracker, rounds: range) -> None:
    for step in rounds:
        tracker.log_round(step, {"acc": 0.5 + 0.1 * step})
    tracker.log_json("merge_report.json", {"accepted": True}, step=rounds[-1])
    fig = accuracy_over_rounds({"d0": [(step, 0.4, 0.6) for step in rounds]})
    tracker.log_figure(fig, "plots/accuracy.png")
    close_figure(fig)


def kinds(records: list[dict]) -> list[str]:
    return [record["kind"] for record in records]


def test_unreachable_server_degrades_at_start_and_journals_everything(tmp_path, source):
    tracker = CampaignTracker(UNREACHABLE, "exp", tmp_path / "runs")

    with pytest.warns(RuntimeWarning, match="JSONL journal"):
        run_id = tracker.start(CONFIG, run_name="offline")
    run_campaign(tracker, range(3))
    version = tracker.log_model_version(source.payload, source.architecture(), {"val_acc": 0.9}, "v1")
    tracker.end()

    records = read_journal(tracker.journal_path)
    assert tracker.degraded and tracker.run_id is None and version is None
    assert tracker.journal_path.name == "offline.jsonl" and len(run_id) == 32
    assert kinds(records) == ["start", "degraded"] + ["params"] + ["metrics"] * 3 + ["artifact"] * 2 + [
        "model_version",
        "end",
    ]
    assert records[2]["data"] == {"seed": "1", "merge.rule": "validated"}
    assert [(r["step"], r["data"]["acc"]) for r in records if r["kind"] == "metrics"] == [
        (0, 0.5),
        (1, 0.6),
        (2, 0.7),
    ]
    root = tracker.journal_path.parent
    artifacts = [r["data"] for r in records if r["kind"] == "artifact"]
    assert json.loads((root / artifacts[0]["file"]).read_text()) == {"accepted": True}
    assert (root / artifacts[1]["file"]).read_bytes().startswith(b"\x89PNG")
    files = records[-2]["data"]["files"]
    assert (root / files["weights"]).read_bytes() == source.payload  # kept for a replay
    assert json.loads((root / files["architecture"]).read_text()) == source.architecture()


def test_degrading_warns_once_and_leaves_http_env_untouched(tmp_path):
    before = {
        k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    }
    tracker = CampaignTracker(UNREACHABLE, "exp", tmp_path / "runs")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.start(CONFIG)
        run_campaign(tracker, range(2))
        tracker.end("FAILED")

    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert {k: os.environ.get(k) for k in before} == before


def test_store_failing_mid_run_degrades_and_keeps_every_record(tmp_path, monkeypatch):
    tracker = CampaignTracker(f"sqlite:///{tmp_path / 'mlruns.db'}", "exp", tmp_path / "runs")
    tracker.start(CONFIG, run_name="flaky")
    tracker.log_round(0, {"acc": 0.5})
    assert not tracker.degraded

    def broken_log_batch(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(tracker._mlflow_run.client, "log_batch", broken_log_batch)
    with pytest.warns(RuntimeWarning, match="went away"):
        tracker.log_round(1, {"acc": 0.6})
    run_campaign(tracker, range(2, 4))
    tracker.end()

    records = read_journal(tracker.journal_path)
    metrics = [(r["step"], r["data"]["acc"]) for r in records if r["kind"] == "metrics"]
    assert tracker.degraded
    assert metrics == [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.8)]
    assert kinds(records).count("degraded") == 1 and kinds(records)[-1] == "end"
    assert kinds(records).count("artifact") == 2


def test_disabled_tracking_writes_the_journal_without_touching_mlflow(tmp_path):
    tracker = CampaignTracker(UNREACHABLE, "exp", tmp_path / "runs", enabled=False)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a degraded-warning here would mean MLflow was contacted
        tracker.start(CONFIG)
        run_campaign(tracker, range(2))
        tracker.end()

    assert not tracker.degraded and tracker.run_id is None
    assert kinds(read_journal(tracker.journal_path)) == [
        "start",
        "params",
        "metrics",
        "metrics",
        "artifact",
        "artifact",
        "end",
    ]
