"""Journal replay across an outage: a campaign journalled while MLflow was unreachable, then pushed
into a real MLflow server (started once for this module with ``eclm ui``'s own command line),
twice: the second replay adds nothing. (The command line's replay runs in the unit tests.)
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
import uuid

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from eclm.modules import modularize
from eclm.serving import ModelSource
from eclm.tracking import (
    CHAMPION,
    CampaignTracker,
    accuracy_over_rounds,
    close_figure,
    load_model,
    replay_journal,
)
from eclm.tracking.commands import ui_command

UNREACHABLE = "http://127.0.0.1:1"  # closed port on loopback: refused at once
CONFIG = {"seed": 4, "merge": {"rule": "validated", "tolerance": 0.01}, "devices": ["d0", "d1"]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow ui`` over a fresh SQLite store on a free loopback port, polled until healthy."""
    root = tmp_path_factory.mktemp("server")
    store = f"sqlite:///{root / 'eclm-mlruns.db'}"
    MlflowClient(store).search_experiments()  # creates the database (ui_command wants an existing store)
    port = _free_port()
    command = ui_command(store, port)
    log = (root / "server.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"mlflow ui did not come up: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield {"uri": uri, "command": command}
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def cloud():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 8, 16, 16)).eval()


def campaign_during_outage(tmp_path, cloud, model_name: str) -> CampaignTracker:
    """A small campaign whose tracker never reaches MLflow: everything lands in the journal."""
    tracker = CampaignTracker(UNREACHABLE, f"exp-{model_name}", tmp_path / "runs", model_name)
    with pytest.warns(RuntimeWarning, match="JSONL journal"):
        tracker.start(CONFIG, run_name="outage", tags={"campaign": "c1"})
    for epoch in range(3):
        tracker.log_epoch(epoch, {"loss": 1.0 / (epoch + 1)})
    for step in range(2):
        tracker.log_round(step, {"cloud/val_acc": 0.8 + 0.05 * step, "devices/mean_acc_after": 0.7})
    tracker.log_json("merge_report.json", {"decision": "accept"}, step=1)
    fig = accuracy_over_rounds({"d0": [(0, 0.5, 0.7), (1, 0.6, 0.8)]})
    tracker.log_figure(fig, "accuracy.png", step=1)
    close_figure(fig)
    with torch.no_grad():
        cloud.backbone.fc.bias.add_(0.5)  # the accepted merge of round 1
    merged = ModelSource.from_modular(cloud)
    tracker.log_model_version(merged.payload, merged.architecture(), {"val_acc": 0.85}, "v0001", step=1)
    tracker.end()
    return tracker


def test_server_is_the_ui_command_bound_to_loopback(server):
    command = server["command"]

    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[2:4] == ["mlflow", "ui"]


def test_a_journal_from_an_outage_replays_into_the_server_once(server, cloud, tmp_path):
    name = f"cloud-{uuid.uuid4().hex[:6]}"
    tracker = campaign_during_outage(tmp_path, cloud, name)
    client = MlflowClient(server["uri"], server["uri"])

    first = replay_journal(tracker.journal_path, server["uri"], pytorch_flavor=False)  # pyfunc is enough here

    assert first.created_run and first.ended and first.missing == []
    assert (first.params, first.metric_points, first.artifacts) == (4, 3 + 2 * 2, 2)
    assert first.model_versions == [f"{name}/1"]
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "outage"
    assert run.data.params["merge.rule"] == "validated" and run.data.tags["campaign"] == "c1"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "offline/loss")] == [
        (0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert [a.path for a in client.list_artifacts(first.run_id, "rounds/round_001")] == [
        "rounds/round_001/accuracy.png", "rounds/round_001/merge_report.json"]
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = cloud.extract(cloud.full_spec()).eval()(images)
        np.testing.assert_allclose(load_model(f"models:/{name}@champion", server["uri"])(images), expected, atol=1e-6)

    again = replay_journal(tracker.journal_path, server["uri"])

    assert again.run_id == first.run_id and again.added == 0
    assert again.reused_versions == [f"{name}/1"]
    assert len(client.get_metric_history(first.run_id, "cloud/val_acc")) == 2
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
