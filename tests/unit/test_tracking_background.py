"""Background publishing: the journal is written at once, MLflow receives everything in order once
the queue drains (flush / end), and a failure in the publisher thread degrades to the journal."""

from __future__ import annotations

import threading
import warnings

import pytest
from mlflow.tracking import MlflowClient

from eclm.modules import modularize
from eclm.serving import ModelSource
from eclm.tracking import CampaignTracker, TrackingConfig, read_journal

CONFIG = {"seed": 1, "merge": {"rule": "validated"}}


@pytest.fixture(scope="module")
def source() -> ModelSource:
    model = modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 16)).eval()
    return ModelSource.from_modular(model)


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"


def background_tracker(uri: str, tmp_path, name: str) -> CampaignTracker:
    return CampaignTracker(uri, f"exp-{name}", tmp_path / "runs", registered_model_name=f"model-{name}",
                           background=True)


def kinds(records: list[dict]) -> list[str]:
    return [r["kind"] for r in records]


def test_the_platform_config_publishes_in_the_background_a_bare_tracker_does_not(tmp_path):
    assert TrackingConfig().background is True
    assert CampaignTracker.from_config(TrackingConfig(), workdir=tmp_path).config.background is True
    assert CampaignTracker(fallback_dir=tmp_path).config.background is False


def test_records_are_journalled_at_once_and_reach_mlflow_in_order_after_flush(uri, tmp_path, source):
    tracker = background_tracker(uri, tmp_path, "order")
    run_id = tracker.start(CONFIG, run_name="bg")
    assert tracker.background
    for step in range(6):
        tracker.log_round(step, {"acc": step / 10})
    tracker.log_json("merge_report.json", {"accepted": True}, step=5)
    version = tracker.log_model_version(source.payload, source.architecture(), {"val_acc": 0.9}, "v0001", step=5)

    # the journal holds every record before anything was published
    written = kinds(read_journal(tracker.journal_path))
    assert written.count("metrics") == 6 and "artifact" in written and "model_version" in written
    assert version is None  # the registry number is journalled once known

    tracker.flush()
    client = MlflowClient(uri, registry_uri=uri)
    history = client.get_metric_history(run_id, "acc")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(s, s / 10) for s in range(6)]
    assert [a.path for a in client.list_artifacts(run_id, "rounds/round_005")] == ["rounds/round_005/merge_report.json"]
    registered = client.search_model_versions("name='model-order'")
    assert [str(v.version) for v in registered] == ["1"]
    stored = [r["data"] for r in read_journal(tracker.journal_path) if r["kind"] == "stored"]
    assert len(stored) == 2 and any(str(s.get("registered_version")) == "1" for s in stored)
    tracker.end()
    assert client.get_run(run_id).info.status == "FINISHED"


def test_end_drains_the_queue_before_closing_the_run(uri, tmp_path, source):
    tracker = background_tracker(uri, tmp_path, "drain")
    run_id = tracker.start(CONFIG)
    for step in range(4):
        tracker.log_round(step, {"acc": 0.5})
        tracker.log_model_version(source.payload, source.architecture(), {}, f"v{step:04d}", step=step)
    tracker.end()  # no flush

    records = read_journal(tracker.journal_path)
    assert kinds(records)[-1] == "end"
    assert kinds(records).count("stored") == 4  # every model version published, then the end
    client = MlflowClient(uri, registry_uri=uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "acc")) == 4
    assert not [t for t in threading.enumerate() if t.name.startswith("eclm-mlflow")]


def test_a_failure_in_the_publisher_degrades_to_the_journal_and_never_raises(uri, tmp_path, monkeypatch):
    tracker = background_tracker(uri, tmp_path, "fail")
    tracker.start(CONFIG)
    tracker.log_round(0, {"acc": 0.5})
    tracker.flush()

    def broken_log_batch(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(tracker._mlflow_run.client, "log_batch", broken_log_batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 4):
            tracker.log_round(step, {"acc": 0.5 + step / 10})  # queued: nothing raises here
        tracker.flush()
    tracker.end()

    records = read_journal(tracker.journal_path)
    assert tracker.degraded and "went away" in tracker._degraded_reason
    assert any("went away" in str(w.message) for w in caught)
    assert [r["step"] for r in records if r["kind"] == "metrics"] == [0, 1, 2, 3]
    assert kinds(records).count("degraded") == 1 and kinds(records)[-1] == "end"


def test_close_stale_run_waits_for_its_answer(uri, tmp_path):
    first = background_tracker(uri, tmp_path / "a", "stale")
    stale_id = first.start(CONFIG)
    second = background_tracker(uri, tmp_path / "b", "stale")
    second.start(CONFIG)
    assert second.close_stale_run(stale_id) is True  # a result, not a queued None
    second.end()
    first._ended = True  # the first driver "died": its run was closed by the second


def test_deferred_work_runs_on_the_publisher_after_what_is_queued_and_end_waits_for_it(uri, tmp_path):
    from eclm.tracking import accuracy_over_rounds, close_figure

    tracker = background_tracker(uri, tmp_path, "defer")
    run_id = tracker.start(CONFIG)
    caller, order = threading.current_thread(), []

    def plot() -> None:
        order.append(("plot", threading.current_thread() is caller))
        fig = accuracy_over_rounds({"d0": [(0, 0.4, 0.6), (1, 0.5, 0.7)]})
        tracker.log_figure(fig, "accuracy.png", step=1)  # recorded from the publisher thread, inline
        close_figure(fig)

    tracker.log_round(1, {"acc": 0.7})
    tracker.defer(plot)
    tracker.defer(lambda: 1 / 0)  # a failing derived record is logged, never raised
    tracker.end()

    assert order == [("plot", False)]
    client = MlflowClient(uri, registry_uri=uri)
    assert [a.path for a in client.list_artifacts(run_id, "rounds/round_001")] == ["rounds/round_001/accuracy.png"]
    records = read_journal(tracker.journal_path)
    assert kinds(records)[-1] == "end" and kinds(records).count("stored") == 1 and not tracker.degraded


def test_a_synchronous_tracker_runs_deferred_work_at_once(tmp_path):
    tracker = CampaignTracker(fallback_dir=tmp_path / "runs", enabled=False)
    tracker.start(CONFIG)
    ran = []
    tracker.defer(lambda: ran.append(threading.current_thread()))
    assert ran == [threading.current_thread()]
    tracker.end()
