"""Journal replay and ``eclm ui`` against real MLflow stores (temp SQLite), no server.

A run that lost MLflow halfway is completed by a replay without a single duplicated metric point;
a journal that is not one is refused; ``eclm ui`` builds a loopback-only ``mlflow ui`` command over
the campaign's own store.
"""

from __future__ import annotations

import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from eclm.cli import main
from eclm.tracking import CampaignTracker, replay_journal
from eclm.tracking.commands import campaign_tracking_uri, ui_command
from eclm.tracking.config import default_tracking_uri

CONFIG = {"seed": 2, "merge": {"rule": "validated"}}


def test_a_run_that_lost_mlflow_halfway_is_completed_without_duplicates(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracker = CampaignTracker(uri, "exp", tmp_path / "runs")
    tracker.start(CONFIG, run_name="flaky")
    tracker.log_epoch(0, {"loss": 0.9})
    tracker.log_round(0, {"acc": 0.5})
    tracker.log_json("merge_report.json", {"round": 0}, step=0)

    def broken(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(tracker._mlflow_run.client, "log_batch", broken)
    with pytest.warns(RuntimeWarning, match="went away"):
        tracker.log_round(1, {"acc": 0.6})
    tracker.log_json("merge_report.json", {"round": 1}, step=1)
    tracker.end()
    monkeypatch.undo()

    summary = replay_journal(tracker.journal_path)

    client = MlflowClient(uri)
    assert summary.run_id == tracker.run_id and not summary.created_run
    assert (summary.params, summary.metric_points, summary.artifacts, summary.ended) == (0, 1, 1, True)
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "acc")] == [(0, 0.5), (1, 0.6)]
    assert len(client.get_metric_history(tracker.run_id, "offline/loss")) == 1
    assert [a.path for a in client.list_artifacts(tracker.run_id, "rounds/round_001")] == [
        "rounds/round_001/merge_report.json"]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert replay_journal(tracker.journal_path).added == 0
    assert main(["replay-journal", str(tracker.journal_path)]) == 0
    assert "0 params, 0 metric points, 0 artifacts, model versions registered: none" in capsys.readouterr().out


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    not_a_journal = tmp_path / "other.jsonl"
    not_a_journal.write_text('{"kind": "metrics", "step": 0, "data": {}, "time": 0}\n')

    with pytest.raises(ValueError, match="not a run journal"):
        replay_journal(not_a_journal, f"sqlite:///{tmp_path / 'db.db'}")
    assert main(["replay-journal", str(not_a_journal)]) == 2


def test_ui_command_serves_the_campaign_store_on_loopback_only(tmp_path):
    uri = default_tracking_uri(tmp_path)
    MlflowClient(uri).search_experiments()  # creates the store

    command = ui_command(uri, port=5077)

    assert command[:4] == [sys.executable, "-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == uri
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5077"
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path.resolve() / "eclm-mlartifacts")


@pytest.mark.parametrize(
    ("uri", "error", "match"),
    [
        ("http://127.0.0.1:5000", ValueError, "not one"),
        ("sqlite:///:memory:", ValueError, "not one"),
        ("sqlite:////nonexistent/eclm-mlruns.db", FileNotFoundError, "run a campaign"),
    ],
)
def test_ui_command_refuses_what_it_cannot_serve(uri, error, match):
    with pytest.raises(error, match=match):
        ui_command(uri)


def test_the_campaign_store_comes_from_its_config_or_its_workdir(tmp_path):
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump({"workdir": str(tmp_path / "w"), "tracking": {"tracking_uri": "http://127.0.0.1:5001"}}))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"workdir": str(tmp_path / "w")}))

    assert campaign_tracking_uri(config=config) == "http://127.0.0.1:5001"
    assert campaign_tracking_uri(config=plain) == default_tracking_uri(tmp_path / "w")
    assert campaign_tracking_uri(workdir=tmp_path) == default_tracking_uri(tmp_path)
    assert main(["ui", "--config", str(config)]) == 0  # a server store: nothing to start
    assert main(["ui", "--workdir", str(tmp_path / "empty")]) == 2  # no store there yet
