"""Typed configuration of experiment tracking (composed into the platform's single config).

Importing this module does not import MLflow, so the platform config can be loaded anywhere
(including on edge processes, which never track).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_HTTP_SCHEMES = ("http://", "https://")


class TrackingConfig(BaseModel):
    """Where a campaign's parameters, per-round metrics, reports and model versions are recorded."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True,
        description="Send records to MLflow. When False only the JSONL journal in fallback_dir is written.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (sqlite:///path.db, http(s)://host:port, ...). "
        "None: sqlite:///<workdir>/eclm-mlruns.db.",
    )
    artifact_location: str | None = Field(
        None,
        description="Artifact root for a newly created experiment (a URI or local path). None: "
        "<database folder>/eclm-mlartifacts for sqlite stores, the server's default otherwise.",
    )
    experiment: str = Field("eclm", min_length=1, max_length=500, description="MLflow experiment name.")
    registered_model_name: str = Field(
        "eclm-cloud",
        min_length=1,
        max_length=250,
        description="Model-registry name for cloud model versions.",
    )
    fallback_dir: Path = Field(
        Path("eclm-runs"),
        description="Folder for the JSONL run journals and their artifact files (relative: to workdir).",
    )
    http_timeout_s: int = Field(
        3, ge=1, le=600, description="Per-request timeout against an HTTP tracking server, seconds."
    )
    http_max_retries: int = Field(
        0, ge=0, le=10, description="Retries per HTTP request before the tracker degrades to the journal."
    )
    pytorch_flavor: bool = Field(
        True,
        description="Also store each model version as a torch.export archive so mlflow.pytorch.load_model "
        "works (pickle-free; repeats the weights and costs ~2 s of export per version). mlflow.pyfunc and "
        "eclm.tracking.load_model work either way.",
    )
    background: bool = Field(
        True,
        description="Publish to MLflow from a background thread, in order, so a campaign's next cycle does not "
        "wait for MLflow (the JSONL journal is still written at once; the run's end waits for the queue). "
        "False: every record reaches MLflow before the call returns.",
    )
    per_device_metrics_max: int = Field(
        32, ge=0,
        description="Campaigns with at most this many devices log device/<name>/* metrics per round; larger "
        "ones log per-round aggregates (mean, quantiles, worst devices) and one per-device table per round.",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _known_store(cls, uri: str | None) -> str | None:
        if uri is None:
            return uri
        if not _URI_SCHEME.match(uri):
            raise ValueError(
                f"tracking_uri {uri!r} needs a scheme, e.g. sqlite:///runs.db or http://host:5000"
            )
        if uri.startswith("file:"):
            # MLflow 3 refuses the file store by default and it has no model registry.
            raise ValueError(f"tracking_uri {uri!r}: the file store is unsupported; use sqlite:///<path>.db")
        return uri

    @field_validator("registered_model_name", "experiment")
    @classmethod
    def _no_surrounding_space(cls, name: str) -> str:
        if name != name.strip():
            raise ValueError(f"name {name!r} must not start or end with whitespace")
        return name

    @field_validator("registered_model_name")
    @classmethod
    def _registry_safe(cls, name: str) -> str:
        # MLflow refuses '/' and ':' in model names; quotes would break the registry search filters.
        if any(char in name for char in "/:'\"`"):
            raise ValueError(f"registered_model_name {name!r} must not contain / : ' \" or `")
        return name

    @model_validator(mode="after")
    def _artifact_location_needs_local_store(self) -> TrackingConfig:
        # An HTTP server owns its artifact store (proxied artifacts); a client-chosen local path
        # would be a path on the *server*, which is almost never what was meant.
        uri = self.tracking_uri or ""
        location = self.artifact_location or ""
        if uri.startswith(_HTTP_SCHEMES) and location and not _URI_SCHEME.match(location):
            raise ValueError(
                f"artifact_location {location!r} is a local path but tracking_uri {uri!r} is a server; "
                "give a URI the server can reach (e.g. s3://bucket/prefix) or leave it None"
            )
        return self


def default_tracking_uri(workdir: Path | str) -> str:
    """The local store used when no tracking URI is configured: ``sqlite:///<workdir>/eclm-mlruns.db``."""
    return f"sqlite:///{(Path(workdir).resolve() / 'eclm-mlruns.db').as_posix()}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """``file://`` URI of ``eclm-mlartifacts`` beside a sqlite database; ``None`` for other stores.

    Without it MLflow 3 puts a new experiment's artifacts in ``./mlruns`` relative to the *current
    working directory* of whoever creates the experiment, not beside the database.
    """
    prefix = "sqlite:///"
    database = tracking_uri[len(prefix) :] if tracking_uri.startswith(prefix) else ""
    if not database or database == ":memory:":
        return None
    return (Path(database).resolve().parent / "eclm-mlartifacts").as_uri()
