"""TrackingConfig validation, store defaults, and the package staying free of Ray and eager MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from eclm.tracking import TrackingConfig, default_artifact_location, default_tracking_uri


def test_defaults_describe_a_local_store():
    config = TrackingConfig()

    assert (config.enabled, config.tracking_uri, config.experiment) == (True, None, "eclm")
    assert (config.registered_model_name, config.fallback_dir) == ("eclm-cloud", Path("eclm-runs"))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"colour": "red"}, "colour"),
        ({"tracking_uri": "runs.db"}, "needs a scheme"),
        ({"tracking_uri": "file:///tmp/mlruns"}, "file store"),
        ({"experiment": ""}, "experiment"),
        ({"experiment": " eclm"}, "whitespace"),
        ({"http_timeout_s": 0}, "http_timeout_s"),
        ({"http_max_retries": -1}, "http_max_retries"),
        ({"tracking_uri": "http://host:5000", "artifact_location": "/tmp/art"}, "artifact_location"),
    ],
)
def test_bad_settings_fail_naming_the_field(fields, match):
    with pytest.raises(ValidationError, match=match):
        TrackingConfig(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"tracking_uri": "sqlite:///runs.db", "artifact_location": "/tmp/art"},
        {"tracking_uri": "http://host:5000", "artifact_location": "s3://bucket/eclm"},
        {"tracking_uri": "https://mlflow.example"},
    ],
)
def test_sensible_settings_are_accepted(fields):
    assert TrackingConfig(**fields).tracking_uri == fields["tracking_uri"]


def test_default_store_and_artifacts_live_in_the_workdir(tmp_path):
    uri = default_tracking_uri(tmp_path)

    assert uri == f"sqlite:///{(tmp_path.resolve() / 'eclm-mlruns.db').as_posix()}"
    assert default_artifact_location(uri) == (tmp_path.resolve() / "eclm-mlartifacts").as_uri()


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "sqlite:///:memory:", "postgresql://db/mlflow"])
def test_only_sqlite_files_get_a_derived_artifact_location(uri):
    assert default_artifact_location(uri) is None


def test_importing_tracking_loads_neither_ray_nor_mlflow():
    code = (
        "import sys, eclm.tracking; "
        "assert 'ray' not in sys.modules, 'ray imported'; "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_public_api_is_exported():
    import eclm.tracking as tracking

    assert [name for name in tracking.__all__ if not hasattr(tracking, name)] == []
