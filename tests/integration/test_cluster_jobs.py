"""The cluster path the Ray way, on ``ray.cluster_utils.Cluster`` (a ``cloud`` head with the Jobs API and
one ``edge`` worker labelled ``eclm/node=edge-a``, on loopback, token authentication on):

* ``ray job submit --working-dir`` runs a campaign whose device is pinned by node label, and the
  checkpoint lands in the lasting location the config names;
* relative paths resolve against the driver's directory, not where the nodes' ``ray start`` ran;
* a driver without the cluster's token gets one line saying how to provide it (docs/cluster.md).

Every campaign runs in its own process, as a user's would; one Cluster serves the module.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import tiny_config

from eclm.resources import CLOUD_RESOURCE, EDGE_RESOURCE, NODE_LABEL

pytestmark = pytest.mark.integration

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before any Ray process starts: bind to loopback

ROOT = Path(__file__).resolve().parents[2]
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
NODE_MEMORY = 80 * 2**20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_jobs_api(url: str, deadline_s: float = 240) -> None:
    """Until the head's job agent takes a job (the dashboard answers before its agent is up)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    start = time.monotonic()
    while True:
        try:
            client = JobSubmissionClient(url)
            job = client.submit_job(entrypoint="echo ready")
            while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                time.sleep(1)
            return
        except Exception:  # noqa: BLE001 - "No available agent to submit job" while it starts
            if time.monotonic() - start > deadline_s:
                raise
            time.sleep(2)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in AUTH_ENV}
    # A token of this module's own (Ray's own tests do the same); the nodes inherit it at start.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    reset_auth_token_state()
    # Free ports of their own: another Ray on this machine may hold the default dashboard (8265)
    # and agent (52365) ports, and the job agent must bind to take a job.
    dashboard = _free_port()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {CLOUD_RESOURCE: 1}, "object_store_memory": NODE_MEMORY,
        "include_dashboard": True, "dashboard_port": dashboard, "dashboard_agent_listen_port": _free_port()})
    c.add_node(num_cpus=1, resources={EDGE_RESOURCE: 2}, labels={NODE_LABEL: "edge-a"},
               object_store_memory=NODE_MEMORY, dashboard_agent_listen_port=_free_port())
    try:
        c.wait_for_nodes()
        _wait_for_jobs_api(f"http://127.0.0.1:{dashboard}")
        yield SimpleNamespace(address=c.address, jobs=f"http://127.0.0.1:{dashboard}")
    finally:
        c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_auth_token_state()


def campaign(tmp_path: Path, **overrides) -> dict:
    """One device pinned to the labelled worker, one offline epoch, no MLflow."""
    return tiny_config(tmp_path, **{
        "name": f"job-{secrets.token_hex(3)}", "data.num_devices": 1, "devices": [{"name": "d0", "node": "edge-a"}],
        "offline": {"epochs": 1, "enhance_epochs": 0, "batch_size": 32, "classes_per_subtask": 3},
        "adaptation.epochs": 1, "tracking": {"enabled": False}, "ray": {"edge_cpus": 0.2, "cloud_cpus": 0.5,
                                                                       "call_timeout_s": 300}, **overrides})


def _run(argv: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_ray_job_submit_runs_a_campaign_from_its_working_dir(cluster, tmp_path):
    working_dir = tmp_path / "job"  # what `ray job submit --working-dir .` uploads from a checkout
    shutil.copytree(ROOT / "eclm", working_dir / "eclm", ignore=shutil.ignore_patterns("__pycache__"))
    lasting = tmp_path / "shared"
    cfg = campaign(tmp_path, workdir=str(lasting), cycles=1)
    (working_dir / "campaign.yaml").write_text(yaml.safe_dump(cfg))
    result = _run([str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.jobs,
                   "--working-dir", str(working_dir), "--", sys.executable, "-m", "eclm.cli", "run",
                   "--config", "campaign.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "cycle 1/1: device acc" in result.stdout and "succeeded" in result.stdout
    assert list((lasting / "checkpoints" / cfg["name"]).iterdir())  # where the config says, not in the job's dir


def test_relative_paths_resolve_against_the_drivers_directory(cluster, tmp_path):
    driver = tmp_path / "driver"
    driver.mkdir()
    cfg = campaign(tmp_path, workdir="runs", cycles=0)
    (driver / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = _run([sys.executable, "-m", "eclm.cli", "run", "--config", "c.yaml", "--address", cluster.address],
                  cwd=driver)
    assert result.returncode == 0, result.stderr[-4000:]
    assert list((driver / "runs" / "checkpoints" / cfg["name"]).iterdir())  # the cloud actor wrote here ...
    assert not (Path.cwd() / "runs").exists()  # ... not in the directory the nodes were started from


def test_a_driver_without_the_token_gets_one_line_saying_how_to_provide_it(cluster, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(campaign(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    result = _run([sys.executable, "-m", "eclm.cli", "run", "--config", "c.yaml", "--address", cluster.address],
                  cwd=tmp_path, env=env)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"eclm: cannot connect to the Ray cluster at '{cluster.address}': it requires its auth "
                           "token and this driver holds no token.")
    assert "RAY_AUTH_TOKEN_PATH=<file>" in line and "docs/cluster.md" in line and "InvalidAuthToken" not in line
