"""The MLflow side of one tracked run: every ``MlflowClient`` call eclm makes lives here.

:class:`MlflowRun` holds a client and an explicit run id (no fluent API, no global active run). It
raises whatever MLflow raises; :class:`~eclm.tracking.tracker.CampaignTracker` wraps each call
and turns a failure into degraded, journal-only tracking. MLflow is imported inside the
functions so that importing :mod:`eclm.tracking` never loads it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

#: Run tag naming the journal run key (the MLflow run id, or the local id of an offline run).
RUN_KEY_TAG = "eclm.run_key"
#: Model version tag holding :func:`~eclm.tracking.model_flavor.model_digest`.
DIGEST_TAG = "eclm.sha256"
_PARAMS_PER_BATCH = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
_METRICS_PER_BATCH = 1000  # MLflow's MAX_METRICS_PER_BATCH


def version_tags(
    digest: str, labels: Mapping[str, str], metrics: Mapping[str, float], extra: Mapping[str, str]
) -> dict[str, str]:
    """Tags of a registered model version: digest, ``eclm.<label>``, ``metric.<name>``, extra tags."""
    return {
        DIGEST_TAG: digest,
        **{f"eclm.{key}": str(value) for key, value in labels.items()},
        **{f"metric.{key}": repr(value) for key, value in metrics.items()},
        **extra,
    }


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
        start_time_ms: int | None = None,
    ) -> MlflowRun:
        """Create the experiment if missing (with ``artifact_location``) and a new run in it.

        Raises:
            RuntimeError: If the experiment exists but is deleted.
            Exception: Whatever MLflow raises (unreachable server, bad store, ...).
        """
        client = _client(tracking_uri)
        experiment_id = _experiment_id(client, experiment, artifact_location)
        run = client.create_run(experiment_id, start_time=start_time_ms, run_name=run_name, tags=dict(tags))
        return cls(client, run.info.run_id, run.info.artifact_uri)

    @classmethod
    def find(cls, tracking_uri: str, experiment: str, run_id: str | None, run_key: str) -> MlflowRun | None:
        """The run ``run_id`` if the store has it, else the run tagged ``eclm.run_key = run_key``.

        Returns:
            The run, or ``None`` if the store holds neither (or not the experiment).
        """
        from mlflow.exceptions import MlflowException

        client = _client(tracking_uri)
        if run_id is not None:
            try:
                run = client.get_run(run_id)
                return cls(client, run.info.run_id, run.info.artifact_uri)
            except MlflowException as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'")
        return cls(client, runs[0].info.run_id, runs[0].info.artifact_uri) if runs else None

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

    def find_version(self, model_name: str, digest: str) -> str | None:
        """The oldest version of ``model_name`` tagged ``eclm.sha256 = digest``, or ``None``."""
        versions = self.client.search_model_versions(
            f"name = '{model_name}' and tags.`{DIGEST_TAG}` = '{digest}'"
        )
        return str(min(int(v.version) for v in versions)) if versions else None

    def register_model(
        self, model_name: str, folder: str, local_dir: Path, tags: Mapping[str, str], alias: str | None
    ) -> str:
        """Upload an MLflow model directory to artifact ``folder`` and register it as a new version.

        Args:
            model_name: Registered model name (created on first use).
            folder: Run-relative artifact folder, e.g. ``models/cloud/v0003``.
            local_dir: Local MLflow model directory (``MLmodel`` at its root).
            tags: Model version tags.
            alias: Alias to point at the new version (e.g. ``champion``), or ``None``.

        Returns:
            The new version number as a string.
        """
        self.client.log_artifacts(self.run_id, str(local_dir), folder)
        self._ensure_registered(model_name)
        # await_creation_for=0: never block the coordinator on an asynchronous registry backend.
        version = self.client.create_model_version(
            model_name,
            source=f"{self.artifact_uri}/{folder}",
            run_id=self.run_id,
            tags=dict(tags),
            await_creation_for=0,
        )
        if alias is not None:
            self.client.set_registered_model_alias(model_name, alias, str(version.version))
        return str(version.version)

    def publish_model(
        self,
        model_name: str,
        folder: str,
        weights: bytes,
        architecture: Mapping[str, Any],
        tags: Mapping[str, str],
        alias: str | None,
        *,
        pytorch_flavor: bool,
        module: Any = None,
        alias_on_reuse: bool = True,
    ) -> tuple[str, bool]:
        """Register a model version unless the registry already holds the same one (by digest).

        Args:
            model_name: Registered model name.
            folder: Run-relative artifact folder for a new version.
            weights: :func:`~eclm.modules.pack_state` bytes.
            architecture: The network's architecture description.
            tags: Version tags; must include ``eclm.sha256``.
            alias: Alias to point at the version, or ``None``.
            pytorch_flavor: Write the ``torch.export`` archive too.
            module: The network already rebuilt from ``architecture`` + ``weights`` (saves a rebuild).
            alias_on_reuse: Also move ``alias`` when an existing version is reused.

        Returns:
            ``(version, reused)``.
        """
        from eclm.tracking.model_flavor import save_model_dir

        existing = self.find_version(model_name, tags[DIGEST_TAG])
        if existing is not None:
            if alias is not None and alias_on_reuse:
                self.set_alias(model_name, alias, existing)
            return existing, True
        with tempfile.TemporaryDirectory(prefix="eclm-model-") as staging:
            target = Path(staging) / "model"
            flavor = save_model_dir(target, weights, architecture, pytorch_flavor=pytorch_flavor, module=module)
            version = self.register_model(model_name, folder, target, {**tags, "eclm.pytorch_flavor": flavor}, alias)
        return version, False

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point ``model_name@alias`` at ``version``."""
        self.client.set_registered_model_alias(model_name, alias, version)

    def params(self) -> dict[str, str]:
        """The run's params."""
        return dict(self.client.get_run(self.run_id).data.params)

    def metric_points(self, key: str) -> set[tuple[int, int, float]]:
        """``(step, timestamp_ms, value)`` of every logged point of metric ``key``."""
        return {(m.step, m.timestamp, m.value) for m in self.client.get_metric_history(self.run_id, key)}

    def artifact_sizes(self, folder: str | None) -> dict[str, int | None]:
        """``{run-relative path: size in bytes}`` of the files directly in ``folder``."""
        return {f.path: f.file_size for f in self.client.list_artifacts(self.run_id, folder) if not f.is_dir}

    def status(self) -> str:
        """The run's status (``RUNNING``, ``FINISHED``, ...)."""
        return self.client.get_run(self.run_id).info.status

    @staticmethod
    def close_if_running(tracking_uri: str, run_id: str, status: str) -> bool:
        """End run ``run_id`` with ``status`` if MLflow still shows it running; whether it did."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status)
        return True

    def terminate(self, status: str, end_time_ms: int | None = None) -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.client.set_terminated(self.run_id, status, end_time=end_time_ms)

    def _ensure_registered(self, model_name: str) -> None:
        from mlflow.exceptions import MlflowException

        if model_name in self._registered_models:
            return
        try:
            self.client.get_registered_model(model_name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(model_name, description="eclm model (architecture JSON + safetensors)")
        self._registered_models.add(model_name)


def _client(tracking_uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _experiment_id(client: MlflowClient, experiment: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return client.create_experiment(experiment, artifact_location=artifact_location)
    if found.lifecycle_stage == "deleted":
        raise RuntimeError(f"experiment {experiment!r} is deleted; restore it or choose another name")
    return found.experiment_id
