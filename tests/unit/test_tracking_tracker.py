"""CampaignTracker against a real MLflow store (temp SQLite + local artifacts): what lands where.

One SQLite store per module (creating its schema costs ~2 s); each test uses its own experiment
and registered model name, so tests stay independent.
"""

from __future__ import annotations

import json
import math
import uuid

import pytest
import safetensors.torch
import torch
from mlflow.tracking import MlflowClient

from eclm.tracking import CampaignTracker, accuracy_over_rounds, close_figure, read_journal

CONFIG = {
    "seed": 3,
    "merge": {"rule": "validated", "tolerance": 0.01},
    "devices": {"count": 4, "ids": [0, 1]},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return {
        "uri": f"sqlite:///{root / 'mlruns.db'}",
        "artifacts": (root / "artifacts").as_uri(),
        "root": root,
    }


@pytest.fixture
def tracker(store, tmp_path):
    name = uuid.uuid4().hex[:8]
    tracker = CampaignTracker(
        tracking_uri=store["uri"],
        experiment=f"exp-{name}",
        fallback_dir=tmp_path / "runs",
        registered_model_name=f"model-{name}",
        artifact_location=store["artifacts"],
    )
    yield tracker
    if tracker.journal_path is not None:
        tracker.end()


def client_for(store) -> MlflowClient:
    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def test_config_is_logged_as_flattened_string_params(store, tracker):
    run_id = tracker.start(CONFIG, run_name="flat", tags={"campaign": "c1"})

    run = client_for(store).get_run(run_id)

    assert run.data.params == {
        "seed": "3",
        "merge.rule": "validated",
        "merge.tolerance": "0.01",
        "devices.count": "4",
        "devices.ids": "[0, 1]",
    }
    assert run.data.tags["campaign"] == "c1"
    assert run.data.tags["eclm.journal"] == str(tracker.journal_path.resolve())
    assert run.info.artifact_uri.startswith(store["artifacts"])
    assert not tracker.degraded


def test_more_params_than_one_batch_all_arrive(store, tracker):
    config = {"layer": {f"l{i}": i for i in range(250)}}

    run_id = tracker.start(config)

    assert len(client_for(store).get_run(run_id).data.params) == 250


@pytest.mark.parametrize("rounds", [1, 4])
def test_round_metrics_are_logged_at_their_round(store, tracker, rounds):
    run_id = tracker.start(CONFIG)
    expected = {step: {"acc/d0": 0.5 + 0.1 * step, "merge/accepted": step % 2 == 0} for step in range(rounds)}

    for step, metrics in expected.items():
        tracker.log_round(step, metrics)

    client = client_for(store)
    for key in ("acc/d0", "merge/accepted"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(step, float(metrics[key])) for step, metrics in expected.items()]


def test_offline_epochs_have_their_own_step_axis(store, tracker):
    run_id = tracker.start(CONFIG)
    losses = [1.0, 0.6, 0.4, 0.3]

    for epoch, loss in enumerate(losses):
        tracker.log_epoch(epoch, {"loss": loss, "val_acc_dense": 0.5 + 0.1 * epoch})
    tracker.log_round(0, {"cloud/val_acc": 0.9})
    tracker.log_round(1, {"cloud/val_acc": 0.92})

    client = client_for(store)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "offline/loss")] == list(enumerate(losses))
    assert [m.step for m in client.get_metric_history(run_id, "cloud/val_acc")] == [0, 1]
    records = read_journal(tracker.journal_path)
    epochs = [r for r in records if r["kind"] == "epoch_metrics"]
    assert [(r["step"], r["data"]["stage"], r["data"]["epoch"]) for r in epochs] == [(None, "offline", e) for e in range(4)]
    assert not any(k.startswith("offline/") for r in records if r["kind"] == "metrics" for k in r["data"])
    with pytest.raises(ValueError, match="log_epoch"):
        tracker.log_round(2, {"offline/loss": 0.2})


def test_non_finite_metrics_are_skipped_but_journalled_as_a_warning(store, tracker, caplog):
    run_id = tracker.start(CONFIG)

    tracker.log_round(2, {"acc": 0.7, "loss": math.nan, "grad": math.inf})

    assert set(client_for(store).get_run(run_id).data.metrics) == {"acc"}
    warnings = [r for r in read_journal(tracker.journal_path) if r["kind"] == "warning"]
    assert warnings[0]["step"] == 2 and set(warnings[0]["data"]["metrics"]) == {"loss", "grad"}
    assert "non-finite" in caplog.text and not tracker.degraded


def test_json_and_png_artifacts_are_listed_at_their_paths(store, tracker):
    run_id = tracker.start(CONFIG)
    report = {"accepted": True, "gain": 0.02}
    fig = accuracy_over_rounds({"d0": [(0, 0.4, 0.6), (1, 0.5, 0.7)]})

    json_path = tracker.log_json("merge_report.json", report, step=3)
    png_path = tracker.log_figure(fig, "plots/accuracy.png")
    close_figure(fig)

    client = client_for(store)
    assert json_path == "rounds/round_003/merge_report.json"
    assert [f.path for f in client.list_artifacts(run_id, "rounds/round_003")] == [json_path]
    assert [f.path for f in client.list_artifacts(run_id, "plots")] == [png_path]
    local = client.download_artifacts(run_id, json_path, str(tracker.journal_path.parent / "dl"))
    assert json.loads(open(local).read()) == report


@pytest.mark.parametrize("status", ["FINISHED", "FAILED"])
def test_end_sets_the_run_status_once(store, tracker, status):
    run_id = tracker.start(CONFIG)

    tracker.end(status)
    tracker.end("KILLED")  # a second end is a no-op

    assert client_for(store).get_run(run_id).info.status == status
    assert [r["data"]["status"] for r in read_journal(tracker.journal_path) if r["kind"] == "end"] == [status]
    with pytest.raises(RuntimeError, match="after end"):
        tracker.log_round(0, {"acc": 1.0})


def test_context_exit_on_exception_marks_the_run_failed(store, tracker):
    with pytest.raises(KeyError), tracker:
        run_id = tracker.start(CONFIG)
        raise KeyError("coordinator crashed")

    assert client_for(store).get_run(run_id).info.status == "FAILED"


def test_a_run_name_names_the_journal_and_is_never_reused(store, tracker, tmp_path):
    other = CampaignTracker(store["uri"], tracker.config.experiment, tmp_path / "runs")

    tracker.start(CONFIG, run_name="same")
    other.start(CONFIG, run_name="same")
    other.end()

    assert tracker.journal_path.name == "same.jsonl"
    assert other.journal_path != tracker.journal_path
    assert tracker.run_id != other.run_id


ST_BLOB = safetensors.torch.save({"w": torch.ones(2)})
ARCH = {"arch": {"name": "resnet18", "kwargs": {}}, "modules_per_layer": 2, "input_size": [3, 32, 32],
        "selector_width": 16, "selector_dim": 64}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda t: t.log_round(-1, {"a": 1.0}), ValueError, "step"),
        (lambda t: t.log_round(1.0, {"a": 1.0}), TypeError, "step"),
        (lambda t: t.log_round(0, {"a": "high"}), TypeError, "metric 'a'"),
        (lambda t: t.log_round(0, {"bad|name": 1.0}), ValueError, "bad|name"),
        (lambda t: t.log_round(0, {"a//b": 1.0}), ValueError, "a//b"),
        (lambda t: t.log_json("report.txt", {}), ValueError, r"\.json"),
        (lambda t: t.log_json("../x.json", {}), ValueError, "artifact_path"),
        (lambda t: t.log_json("x.json", [1]), TypeError, "mapping"),
        (lambda t: t.log_figure("not a figure", "a.png"), TypeError, "Figure"),
        (lambda t: t.log_model_version(b"junk", ARCH, {}, "v1"), ValueError, "safetensors"),
        (lambda t: t.log_model_version("str", ARCH, {}, "v1"), TypeError, "weights"),
        (lambda t: t.log_model_version(ST_BLOB, {"arch": {}}, {}, "v1"), ValueError, "architecture lacks"),
        (lambda t: t.log_model_version(ST_BLOB, '{"full": true}', {}, "v1"), TypeError, "architecture must be"),
        (lambda t: t.log_model_version(ST_BLOB, ARCH, {}, "v1"), ValueError, "spec"),
        (lambda t: t.log_model_version(ST_BLOB, ARCH, {}, "../v1"), ValueError, "version_tag"),
        (lambda t: t.log_model_version(ST_BLOB, ARCH, {}, "v1", alias="latest"), ValueError, "alias"),
        (lambda t: t.log_epoch(0, {"loss": 1.0}, stage="a/b"), ValueError, "segment"),
        (lambda t: t.end("DONE"), ValueError, "status"),
    ],
)
def test_bad_input_raises_naming_the_field_and_leaves_tracking_healthy(tracker, call, error, match):
    tracker.start(CONFIG)

    with pytest.raises(error, match=match):
        call(tracker)

    assert not tracker.degraded


@pytest.mark.parametrize(
    ("call", "match"),
    [(lambda t: t.log_round(0, {"a": 1.0}), "before start"), (lambda t: t.end(), "before start")],
)
def test_calls_before_start_are_refused(tracker, call, match):
    with pytest.raises(RuntimeError, match=match):
        call(tracker)


def test_start_twice_is_refused(tracker):
    tracker.start(CONFIG)

    with pytest.raises(RuntimeError, match="already"):
        tracker.start(CONFIG)
