"""The README's example runs as written: examples/campaign.yaml checks out and examples/quickstart.py
runs end to end (its own process, its own local Ray), and the README quotes it verbatim."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_the_readme_quotes_the_quickstart_verbatim():
    readme = (ROOT / "README.md").read_text()
    assert (EXAMPLES / "quickstart.py").read_text() in readme
    assert "examples/campaign.yaml" in readme


def test_the_example_campaign_passes_the_checks():
    from eclm.cli import main

    assert main(["check-config", str(EXAMPLES / "campaign.yaml")]) == 0


def test_the_quickstart_runs_as_written(tmp_path):
    for name in ("campaign.yaml", "quickstart.py"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1")

    run = subprocess.run([sys.executable, "quickstart.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)

    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert any(line.endswith("cloud version 1") or "cycle(s) ran, cloud version" in line for line in lines)
    assert any(line.startswith("camera: accuracy ") for line in lines)
    assert any(line.startswith("camera now holds ") for line in lines)
    assert (tmp_path / "eclm-quickstart" / "campaigns" / "quickstart").is_dir()  # the store, in the workdir
