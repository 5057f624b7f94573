"""The MLflow side of one tracked run: every ``MlflowClient`` call eclm makes lives here.

:class:`MlflowRun` holds a client and an explicit run id (no fluent API, no global active run). It
raises whatever MLflow raises; :class:`~eclm.tracking.tracker.CampaignTracker` wraps each call
and turns a failure into degraded, journal-only tracking. MLflow is imported inside the
functions so that importing :mod:`eclm.tracking` never loads it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_PARAMS_PER_BATCH = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
_METRICS_PER_BATCH = 1000  # MLflow's MAX_METRICS_PER_BATCH


@contextlib.contextmanager
def http_fail_fast(timeout_s: int, max_retries: int) -> Iterator[None]:
    """Bound MLflow's HTTP timeout and retries for the calls made inside the block.

    MLflow reads ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` on every
    request; its defaults (120 s, 5 retries with exponential backoff) stall a campaign for minutes
    on a dead server. The variables are restored on exit so other code in the process is unaffected.

    Args:
        timeout_s: Per-request timeout, seconds.
        max_retries: Retries per request.
    """
    overrides = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
    }
    previous = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class MlflowRun:
    """An open MLflow run: client, run id and artifact URI.

    Args:
        client: Client bound to the tracking and registry URI.
        run_id: The run every call logs to.
        artifact_uri: Root URI of the run's artifacts (model versions point below it).
    """

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self._registered_models: set[str] = set()

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        experiment: str,
        artifact_location: str | None,
        run_name: str | None,
        tags: Mapping[str, str],
    ) -> MlflowRun:
        """Create the experiment if missing (with ``artifact_location``) and a new run in it.

        Raises:
            RuntimeError: If the experiment exists but is deleted.
            Exception: Whatever MLflow raises (unreachable server, bad store, ...).
        """
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
        elif found.lifecycle_stage == "deleted":
            raise RuntimeError(f"experiment {experiment!r} is deleted; restore it or choose another name")
        else:
            experiment_id = found.experiment_id
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        return cls(client, run.info.run_id, run.info.artifact_uri)

    def log_params(self, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        """Log params (and tags with the first batch), at most 100 params per ``log_batch``."""
        from mlflow.entities import Param, RunTag

        param_list = [Param(key, value) for key, value in params.items()]
        tag_list = [RunTag(key, value) for key, value in tags.items()]
        for start in range(0, max(len(param_list), 1), _PARAMS_PER_BATCH):
            batch = param_list[start : start + _PARAMS_PER_BATCH]
            self.client.log_batch(
                self.run_id, params=batch, tags=tag_list if start == 0 else (), synchronous=True
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int) -> None:
        """Log metrics at ``step``, at most 1000 per ``log_batch``."""
        from mlflow.entities import Metric

        metric_list = [Metric(key, value, timestamp_ms, step) for key, value in metrics.items()]
        for start in range(0, len(metric_list), _METRICS_PER_BATCH):
            batch = metric_list[start : start + _METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_artifact(self, local_file: Path, folder: str | None) -> None:
        """Upload one file to ``<artifact root>/<folder>/<file name>``."""
        self.client.log_artifact(self.run_id, str(local_file), folder)

    def register_version(
        self, model_name: str, folder: str, local_folder: Path, tags: Mapping[str, str]
    ) -> str:
        """Upload ``local_folder`` to artifact ``folder`` and register it as a version of ``model_name``.

        Args:
            model_name: Registered model name (created on first use).
            folder: Run-relative artifact folder, e.g. ``models/v3``.
            local_folder: Local folder holding ``model.safetensors`` and ``spec.json``.
            tags: Model version tags.

        Returns:
            The new version number as a string.
        """
        from mlflow.exceptions import MlflowException

        self.client.log_artifacts(self.run_id, str(local_folder), folder)
        if model_name not in self._registered_models:
            try:
                self.client.get_registered_model(model_name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self.client.create_registered_model(model_name, description="eclm cloud model (safetensors)")
            self._registered_models.add(model_name)
        # await_creation_for=0: never block the coordinator on an asynchronous registry backend.
        version = self.client.create_model_version(
            model_name,
            source=f"{self.artifact_uri}/{folder}",
            run_id=self.run_id,
            tags=dict(tags),
            await_creation_for=0,
        )
        return str(version.version)

    def terminate(self, status: str) -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.client.set_terminated(self.run_id, status)
