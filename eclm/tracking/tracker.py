"""The campaign tracker: the one place in eclm that talks to MLflow.

A cloud/driver-side coordinator owns one :class:`CampaignTracker` per campaign; edge actors never
track. Every MLflow call goes through ``MlflowClient`` with the run id passed explicitly (no
fluent ``mlflow.log_*`` API, no global active run), so several trackers can coexist in one process.

**Journal first, MLflow second.** Every record (params, per-round metrics, artifacts, model
versions, the end of the run) is first appended to a JSONL journal in ``fallback_dir`` and only
then sent to MLflow. Writing a line is cheap, and it means no record depends on MLflow being up:

* MLflow unreachable at :meth:`CampaignTracker.start` -> the tracker is ``degraded`` from the
  start and the journal is the only record;
* MLflow failing mid-campaign -> the tracker warns once (``warnings`` and ``logging``), stops
  calling MLflow, and the journal still holds everything, including what MLflow did receive.

No exception from MLflow ever reaches the coordinator. HTTP stores are made to fail fast (the
``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` environment variables are
set from the config around each call) so an unreachable server costs seconds, not minutes.

**Publishing in the background** (``background=True``, what the platform uses): the journal is
written at once, in the caller's thread, and the MLflow side of every record is queued, in order,
to one publisher thread, so a campaign's next cycle does not wait for MLflow (registering a model
version takes 0.5-2 s). :meth:`CampaignTracker.flush` waits for the queue and :meth:`CampaignTracker.end`
drains it before closing the run. A driver that dies with records still queued loses nothing: the
journal holds them and :func:`~eclm.tracking.replay_journal` publishes what MLflow lacks.

**Bytes once.** Artifact and model bytes are staged beside the journal and deleted once MLflow
holds them; the journal then keeps a ``stored`` reference. A journal written during an outage keeps
its files until :func:`~eclm.tracking.replay_journal` pushes them.

Model versions are MLflow models (see :mod:`eclm.tracking.model_flavor`): architecture JSON plus
safetensors weights, loadable with ``mlflow.pyfunc`` and (through a ``torch.export`` archive)
``mlflow.pytorch``; never a pickled module. A version whose architecture and weights are already
registered under the same name is reused, not registered again.
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from eclm.tracking._checks import check_key, check_number, check_step, check_tags
from eclm.tracking._mlflow_run import RUN_KEY_TAG, MlflowRun, http_fail_fast
from eclm.tracking._model_log import ModelLog
from eclm.tracking.config import TrackingConfig, default_artifact_location, default_tracking_uri
from eclm.tracking.flatten import config_params
from eclm.tracking.journal import RunJournal, check_artifact_path, json_default, unique_journal_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Terminal run statuses accepted by :meth:`CampaignTracker.end`.
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
_MAX_REASON_CHARS = 500
_T = TypeVar("_T")


class CampaignTracker(ModelLog):
    """Records one campaign run in MLflow, journalled to JSONL, failing soft.

    Args:
        tracking_uri: MLflow tracking (and registry) URI; ``None`` for :func:`default_tracking_uri`.
        experiment: Experiment name; created on :meth:`start` if missing.
        fallback_dir: Folder for the JSONL journal and its artifact files; relative to ``workdir``.
        registered_model_name: Model-registry name that :meth:`log_model_version` registers under.
        workdir: Base folder for the default store and a relative ``fallback_dir``.
        artifact_location: Artifact root of a newly created experiment; ``None`` for
            :func:`default_artifact_location`.
        enabled: ``False`` never touches MLflow (journal only; ``degraded`` stays ``False``).
        http_timeout_s: Per-request timeout against an HTTP server, seconds.
        http_max_retries: Retries per HTTP request.
        pytorch_flavor: Also store each model version as a ``torch.export`` archive so that
            ``mlflow.pytorch.load_model`` works (repeats the weights; ~2 s of export per version).
        background: Publish to MLflow from a background thread once the run is open (the journal
            is still written at once); :meth:`log_model_version` then returns ``None`` and
            :meth:`flush` waits for what is queued.

    Raises:
        ValueError: If a setting is invalid (see :class:`TrackingConfig`).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "eclm",
        fallback_dir: Path | str = "eclm-runs",
        registered_model_name: str = "eclm-cloud",
        *,
        workdir: Path | str = ".",
        artifact_location: str | None = None,
        enabled: bool = True,
        http_timeout_s: int = 3,
        http_max_retries: int = 0,
        pytorch_flavor: bool = True,
        background: bool = False,
    ) -> None:
        self.config = TrackingConfig(
            enabled=enabled,
            tracking_uri=tracking_uri,
            artifact_location=artifact_location,
            experiment=experiment,
            registered_model_name=registered_model_name,
            fallback_dir=Path(fallback_dir),
            http_timeout_s=http_timeout_s,
            http_max_retries=http_max_retries,
            pytorch_flavor=pytorch_flavor,
            background=background,
        )
        workdir = Path(workdir)
        self.tracking_uri = self.config.tracking_uri or default_tracking_uri(workdir)
        self.artifact_location = self.config.artifact_location or default_artifact_location(self.tracking_uri)
        self.fallback_dir = workdir / self.config.fallback_dir
        self._mlflow_run: MlflowRun | None = None
        self._journal: RunJournal | None = None
        self._degraded_reason: str | None = None
        self._ended = False
        self._model_folders: set[str] = set()
        self._epoch_stages: set[str] = set()
        self._publisher: ThreadPoolExecutor | None = None  # background publishing, from start() to end()
        self._queued: list[Future] = []
        self._queue_lock = threading.Lock()  # the publisher queues too (work run by defer())
        self._on_publisher = threading.local()

    @classmethod
    def from_config(cls, config: TrackingConfig, workdir: Path | str = ".") -> CampaignTracker:
        """Build a tracker from the platform's :class:`TrackingConfig` section."""
        # per_device_metrics_max is the recorder's business (what to log), not the tracker's.
        return cls(**config.model_dump(exclude={"per_device_metrics_max"}), workdir=workdir)

    @property
    def background(self) -> bool:
        """Whether MLflow calls are queued to the publisher thread (see the module docstring)."""
        return self._publisher is not None

    @property
    def degraded(self) -> bool:
        """True once MLflow failed; from then on records go to the journal only."""
        return self._degraded_reason is not None

    @property
    def journal_path(self) -> Path | None:
        """The run's JSONL journal (``None`` before :meth:`start`)."""
        return None if self._journal is None else self._journal.path

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, or ``None`` if MLflow was never reached (or tracking is disabled)."""
        return None if self._mlflow_run is None else self._mlflow_run.run_id

    def start(
        self, config: Mapping[str, Any], run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str:
        """Open the run: create the experiment if needed, the run, and log the config as params.

        Args:
            config: Nested run configuration; logged flattened (``merge.rule``), values as strings
                cut to MLflow's 6000-character limit.
            run_name: Display name, also the journal's file name (``<run_name>.jsonl``); ``None``
                lets MLflow pick a name and names the journal after the run id.
            tags: Extra run tags.

        Returns:
            The MLflow run id, or a local hex id when MLflow is unreachable or disabled.

        Raises:
            RuntimeError: If the run was already started.
            TypeError, ValueError: If the config, run name or tags are malformed.
        """
        if self._journal is not None:
            raise RuntimeError("start() was already called; use one CampaignTracker per run")
        params = config_params(config)
        for key in params:
            check_key("config key", key)
        tag_values = check_tags(tags)
        if run_name is not None and (not isinstance(run_name, str) or not run_name.strip()):
            raise ValueError(f"run_name must be a non-empty string or None, got {run_name!r}")

        self._mlflow_run = self._call(
            "start of the run",
            lambda: MlflowRun.open(
                self.tracking_uri, self.config.experiment, self.artifact_location, run_name, tag_values
            ),
        )
        run_key = self.run_id or uuid.uuid4().hex
        self._journal = RunJournal(unique_journal_path(self.fallback_dir, run_name or run_key))
        self._journal.append(
            "start",
            {
                "run_name": run_name,
                "run_id": run_key,
                "mlflow_run_id": self.run_id,
                "tags": tag_values,
                "experiment": self.config.experiment,
                "tracking_uri": self.tracking_uri,
                "artifact_location": self.artifact_location,
            },
        )
        if self.degraded:  # MLflow failed before the journal existed; record that now
            self._journal.append("degraded", {"reason": self._degraded_reason})
        self._journal.append("params", params)
        if self.config.background and self.run_id is not None:
            self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eclm-mlflow")
        run_tags = {"eclm.journal": str(self._journal.path.resolve()), RUN_KEY_TAG: run_key}
        self._call("logging of params", lambda: self._run().log_params(params, run_tags))
        return run_key

    def close_stale_run(self, run_id: str, status: str = "KILLED") -> bool:
        """End an earlier run that MLflow still shows as running (its driver died).

        A resumed campaign calls this for the run it continues, so the UI never shows a run
        that nothing writes to any more as RUNNING.

        Args:
            run_id: The earlier run's id.
            status: Terminal status to give it.

        Returns:
            Whether the run was running and is now ended (``False`` when MLflow is unreachable).
        """
        return bool(self._call(f"closing the earlier run {run_id}",
                               lambda: MlflowRun.close_if_running(self.tracking_uri, run_id, status), wait=True))

    def log_round(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log one campaign round's metrics with ``step=round``.

        Non-finite values (NaN, inf) are not sent to MLflow; they are logged as a warning and
        journalled as a ``warning`` record so a diverging device stays visible.

        Args:
            step: Round index, ``>= 0``.
            metrics: ``{name: value}``, e.g. ``{"device/3/acc_after": 0.81, "merge/accepted": True}``.

        Raises:
            RuntimeError: If the run is not open.
            TypeError, ValueError: If the step, a name or a value is malformed, or a name belongs to
                a stage logged with :meth:`log_epoch` (those keep their own step axis).
        """
        journal = self._require_open("log_round")
        check_step(step)
        values = self._checked_values(metrics)
        clash = sorted(key for key in values if key.split("/", 1)[0] in self._epoch_stages)
        if clash:
            raise ValueError(f"metrics {clash} belong to an epoch stage; log them with log_epoch()")
        finite = self._finite_metrics(values, f"round {step}", step)
        record = journal.append("metrics", finite, step)
        timestamp_ms = int(record["time"] * 1000)  # the journal's time, so a replay can recognise the point
        self._call(
            f"logging of round {step} metrics", lambda: self._run().log_metrics(finite, step, timestamp_ms)
        )

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any], stage: str = "offline") -> None:
        """Log one training epoch of a campaign stage (the offline stage) on its own step axis.

        MLflow gets ``<stage>/<name>`` at ``step=epoch``, a series of its own that never mixes
        with the round metrics; the journal gets an ``epoch_metrics`` record
        ``{"stage", "epoch", "metrics"}`` with ``step`` null (the stage is not a round).

        Args:
            epoch: Epoch index, ``>= 0``.
            metrics: ``{name: value}`` without the stage prefix, e.g. ``{"loss": 0.4}``.
            stage: Stage name, a single metric-name segment.

        Raises:
            RuntimeError: If the run is not open.
            TypeError, ValueError: If the epoch, stage, a name or a value is malformed.
        """
        journal = self._require_open("log_epoch")
        check_step(epoch)
        if "/" in check_key("stage", stage):
            raise ValueError(f"stage {stage!r} must be a single name segment (no '/')")
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
        prefixed = {f"{stage}/{key}": value for key, value in metrics.items()}
        finite = self._finite_metrics(prefixed, f"{stage} epoch {epoch}", None)
        self._epoch_stages.add(stage)
        record = journal.append("epoch_metrics", {"stage": stage, "epoch": epoch, "metrics": finite})
        timestamp_ms = int(record["time"] * 1000)
        self._call(
            f"logging of {stage} epoch {epoch}", lambda: self._run().log_metrics(finite, epoch, timestamp_ms)
        )

    def log_json(self, name: str, data: Mapping[str, Any], step: int | None = None) -> str:
        """Log a JSON artifact, under ``rounds/round_<step:03d>/`` when ``step`` is given.

        Args:
            name: File name (or run-relative path) ending in ``.json``, e.g. ``merge_report.json``.
            data: JSON-serialisable mapping (numpy/torch values are converted with ``tolist``).
            step: Round the artifact belongs to, or ``None`` for a run-level artifact.

        Returns:
            The artifact path, e.g. ``rounds/round_003/merge_report.json``.

        Raises:
            RuntimeError: If the run is not open.
            TypeError, ValueError: If the name, data or step is malformed.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"data for {name!r} must be a mapping, got {type(data).__name__}")
        artifact_path = self._artifact_path(name, ".json", step)
        content = json.dumps(data, indent=2, default=json_default).encode("utf-8")
        return self._log_artifact(artifact_path, content, step)

    def log_figure(self, fig: Figure, path: str, step: int | None = None, dpi: int = 100) -> str:
        """Log a matplotlib figure as a PNG artifact.

        Args:
            fig: The figure (see :mod:`eclm.tracking.plots`).
            path: Run-relative artifact path ending in ``.png``, e.g. ``plots/accuracy.png``.
            step: Round the figure belongs to (places it under ``rounds/round_<step:03d>/``), or ``None``.
            dpi: Resolution of the PNG, dots per inch.

        Returns:
            The artifact path.

        Raises:
            RuntimeError: If the run is not open.
            TypeError: If ``fig`` is not a matplotlib figure.
            ValueError: If ``path`` or ``step`` is malformed.
        """
        if not callable(getattr(fig, "savefig", None)):
            raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
        artifact_path = self._artifact_path(path, ".png", step)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        return self._log_artifact(artifact_path, buffer.getvalue(), step)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with a terminal status; a second call is a no-op.

        Args:
            status: ``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``.

        Raises:
            ValueError: If ``status`` is unknown.
            RuntimeError: If the run was never started.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        if self._journal is None:
            raise RuntimeError("end() called before start()")
        if self._ended:
            return
        self.flush()  # what is queued is published (and journalled as stored) before the end
        self._ended = True
        self._journal.append("end", {"status": status})
        self._call("end of the run", lambda: self._run().terminate(status), wait=True)
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
            self._publisher = None

    def flush(self) -> None:
        """Wait until everything queued for MLflow was published (or failed soft); a no-op for a
        synchronous tracker (and on the publisher thread itself, which runs the queue in order)."""
        if getattr(self._on_publisher, "active", False):
            return
        while True:
            with self._queue_lock:
                queued, self._queued = self._queued, []
            if not queued:
                return
            for future in queued:
                future.result()  # queued work never raises: failures degrade to the journal

    def defer(self, work: Callable[[], Any]) -> None:
        """Run ``work``, which records through this tracker, on the publisher thread after what is
        queued (at once on a synchronous tracker).

        For records derived from others, e.g. plots drawn from metrics the journal already holds:
        they cost the campaign no time, and a driver that dies first loses only them. An error in
        ``work`` is logged, not raised.
        """
        if self._publisher is None:
            work()
            return
        self._submit(self._deferred, work)

    def _deferred(self, work: Callable[[], Any]) -> None:
        try:
            work()
        except Exception:  # noqa: BLE001 - derived records must not break the publisher
            logger.exception("deferred tracking work failed")

    def __enter__(self) -> CampaignTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._journal is not None and not self._ended:
            self.end("FAILED" if exc_type is not None else "FINISHED")

    # -- machinery -------------------------------------------------------------------------------

    def _call(self, action: str, send: Callable[[], _T], then: Callable[[_T], Any] | None = None,
              wait: bool = False) -> _T | None:
        """Run one MLflow interaction, then ``then(result)`` if it succeeded; on any failure degrade
        to the journal instead of raising. A background tracker queues it (and returns ``None``)
        unless ``wait``: then what is queued goes first and the result is returned."""
        if not self.config.enabled or self.degraded:
            return None
        if self._publisher is None or wait or getattr(self._on_publisher, "active", False):
            self.flush()
            return self._send(action, send, then)
        self._submit(self._send, action, send, then)
        return None

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        def on_publisher() -> Any:
            self._on_publisher.active = True
            return fn(*args)

        with self._queue_lock:
            self._queued = [f for f in self._queued if not f.done()]
            self._queued.append(self._publisher.submit(on_publisher))

    def _send(self, action: str, send: Callable[[], _T], then: Callable[[_T], Any] | None) -> _T | None:
        if self.degraded:  # an earlier (queued) interaction failed
            return None
        try:
            with http_fail_fast(self.config.http_timeout_s, self.config.http_max_retries):
                result = send()
            if then is not None and result:
                then(result)
            return result
        except Exception as error:  # noqa: BLE001 - fail soft: the journal already holds the record
            self._degrade(action, error)
            return None

    def _degrade(self, action: str, error: Exception) -> None:
        self._degraded_reason = f"{action}: {type(error).__name__}: {error}"[:_MAX_REASON_CHARS]
        where = f" at {self._journal.path}" if self._journal is not None else f" under {self.fallback_dir}"
        message = (
            f"MLflow tracking ({self.tracking_uri}) failed during {self._degraded_reason}; "
            f"continuing with the JSONL journal only{where}"
        )
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        if self._journal is not None:
            self._journal.append("degraded", {"reason": self._degraded_reason})

    def _run(self) -> MlflowRun:
        assert self._mlflow_run is not None, "MLflow run not open"  # _call skips MLflow when degraded
        return self._mlflow_run

    def _require_open(self, method: str) -> RunJournal:
        if self._journal is None:
            raise RuntimeError(f"{method}() called before start()")
        if self._ended:
            raise RuntimeError(f"{method}() called after end()")
        return self._journal

    def _artifact_path(self, name: str, suffix: str, step: int | None) -> str:
        check_artifact_path(name)
        if not name.endswith(suffix):
            raise ValueError(f"artifact name {name!r} must end in {suffix}")
        if step is None:
            return name
        return f"rounds/round_{check_step(step):03d}/{name}"

    def _log_artifact(self, artifact_path: str, content: bytes, step: int | None) -> str:
        journal = self._require_open("log artifact")
        local_file = journal.write_artifact(artifact_path, content)
        record = journal.append(
            "artifact",
            {"artifact_path": artifact_path, "file": journal.relative(local_file), "bytes": len(content)},
            step,
        )
        folder = posixpath.dirname(artifact_path) or None
        self._call(f"upload of {artifact_path}", lambda: self._run().log_artifact(local_file, folder) or True,
                   then=lambda _: self._stored(record, [local_file], uri=f"{self._run().artifact_uri}/{artifact_path}"))
        return artifact_path

    def _stored(self, record: Mapping[str, Any], files: list[Path], uri: str, **extra: Any) -> None:
        """MLflow holds the bytes of ``record`` now: drop the staged files, journal the reference."""
        journal = self._require_open("log artifact")
        for local_file in files:
            journal.discard(local_file)
        journal.append("stored", {"ref": record["id"], "uri": uri, **extra}, record["step"])

    def _checked_values(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
        return {check_key("metric", key): check_number(key, value) for key, value in metrics.items()}

    def _finite_metrics(self, metrics: Mapping[str, Any], where: str, step: int | None) -> dict[str, float]:
        """The finite metrics; non-finite ones are left out, logged and journalled as a warning."""
        values = self._checked_values(metrics)
        finite = {key: value for key, value in values.items() if math.isfinite(value)}
        skipped = {key: repr(value) for key, value in values.items() if key not in finite}
        if skipped:
            logger.warning("%s: skipping non-finite metrics %s", where, skipped)
            self._require_open("log metrics").append(
                "warning", {"message": "non-finite metrics skipped", "metrics": skipped}, step
            )
        return finite
