"""The driver killed with SIGKILL after an accepted round, then ``eclm run --resume``.

Each ``eclm run`` is its own process with its own local Ray (started in a new session, so the
kill takes the driver and every Ray process it started). The resumed run must continue from the
last commit: no pretraining, versions going on from where they were, earlier files untouched,
the killed MLflow run closed and no model version registered twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

pytestmark = pytest.mark.integration

ECLM = [sys.executable, "-m", "eclm.cli"]


def _newest_commit(workdir: Path) -> dict | None:
    commits = sorted(workdir.glob("campaigns/*/*/commits/commit_*.json"))
    return json.loads(commits[-1].read_text()) if commits else None


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "devices" not in p.parts}


def test_a_killed_driver_resumes_from_its_last_commit(tmp_path):
    from mlflow.tracking import MlflowClient

    # every merge accepted (tolerances 1.0, no cap on an observed drop): versions count the rounds
    cfg = tiny_config(tmp_path, **{"cycles": 8, "merge.tolerance": 1.0, "merge.device_tolerance": 1.0,
                                   "merge.max_drop": None, "merge.device_max_drop": None, "adaptation.epochs": 1,
                                   "data.num_devices": 2, "devices": [{"name": "d0"}, {"name": "d1"}],
                                   "offline": {"epochs": 1, "enhance_epochs": 0, "batch_size": 32,
                                               "classes_per_subtask": 3}})
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen([*ECLM, "run", "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 600
        while (commit := _newest_commit(tmp_path)) is None or commit["version"] < 1:
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "no accepted round within 10 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(os.getpgid(first.pid), signal.SIGKILL)
        first.wait()
    run = next(tmp_path.glob("campaigns/itest/*"))
    killed = _newest_commit(tmp_path)
    before = _files(run)

    resumed = subprocess.run([*ECLM, "run", "--config", str(path), "--resume", "--cycles", "1"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=600)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from round {killed['round']}" in resumed.stdout
    assert "offline stage" not in resumed.stdout  # no pretraining
    after = _newest_commit(tmp_path)
    assert after["round"] == killed["round"] + 1 and after["version"] == killed["version"] + 1
    assert list(tmp_path.glob("campaigns/itest/*")) == [run]  # the same run continued, no new one
    now = _files(run)
    assert {k: now[k] for k in before} == before  # every earlier file byte-identical
    client = MlflowClient(cfg["tracking"]["tracking_uri"])
    old = client.get_run(killed["mlflow_run_id"])
    new = client.get_run(after["mlflow_run_id"])
    assert old.info.status == "KILLED" and new.info.status == "FINISHED"
    assert new.data.tags["eclm.resumed_from"] == old.info.run_id
    versions = client.search_model_versions(f"name='{cfg['tracking'].get('registered_model_name', 'eclm-cloud')}'")
    tags = [v.tags.get("eclm.version_tag") for v in versions]
    assert tags.count("v0000") == 1 and len(tags) == len(set(tags))  # nothing registered twice
