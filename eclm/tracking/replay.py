"""Replay a run journal into MLflow: what a campaign recorded during an outage, sent afterwards.

:func:`replay_journal` reads a journal written by :class:`~eclm.tracking.CampaignTracker` and
sends MLflow whatever it does not hold yet. It is idempotent: it compares with the store before
sending, so a second replay (or a replay of a run that reached MLflow halfway) adds nothing twice.

* the run: the journal's MLflow run if the store has it, else the run tagged
  ``eclm.run_key = <journal run id>``, else a new run with the journal's name, tags and start time;
* params: only those the run lacks (a different value already logged is reported, not changed);
* metric points: only those whose ``(step, timestamp, value)`` the run lacks; the timestamp is the
  journal record's time, which the live tracker also sends, so live and replayed points coincide;
* artifacts: only paths the run lacks, from the files staged beside the journal;
* model versions: registered from the staged safetensors and architecture unless the registry
  holds the same digest (then reused, and the alias is left alone);
* the end: the run is terminated with the journal's status if it is still running.

The journal itself is only read; its staged files stay where they are.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eclm.tracking._mlflow_run import RUN_KEY_TAG, MlflowRun, http_fail_fast, version_tags
from eclm.tracking.config import default_artifact_location
from eclm.tracking.journal import read_journal


@dataclass
class ReplaySummary:
    """What a replay sent.

    Attributes:
        run_id: The MLflow run the journal was replayed into.
        tracking_uri: The store.
        created_run: The run was created by this replay.
        params: Params added.
        metric_points: Metric points added (round and epoch metrics).
        artifacts: Artifact files uploaded.
        model_versions: Versions registered, as ``"<name>/<version>"``.
        reused_versions: Versions the registry already held (same digest).
        ended: The run was terminated by this replay.
        missing: What could not be sent (file neither staged nor in the store, param conflicts).
    """

    run_id: str
    tracking_uri: str
    created_run: bool = False
    params: int = 0
    metric_points: int = 0
    artifacts: int = 0
    model_versions: list[str] = field(default_factory=list)
    reused_versions: list[str] = field(default_factory=list)
    ended: bool = False
    missing: list[str] = field(default_factory=list)

    @property
    def added(self) -> int:
        """Number of things this replay changed in MLflow (0 on a repeated replay)."""
        return (int(self.created_run) + self.params + self.metric_points + self.artifacts
                + len(self.model_versions) + int(self.ended))


def replay_journal(
    journal: Path | str,
    tracking_uri: str | None = None,
    *,
    pytorch_flavor: bool = True,
    http_timeout_s: int = 60,
    http_max_retries: int = 2,
) -> ReplaySummary:
    """Send a run journal's records to MLflow, skipping what the store already holds.

    Args:
        journal: The run's ``.jsonl`` journal (its staged files lie beside it).
        tracking_uri: Store to replay into; ``None`` for the one the journal was written against.
        pytorch_flavor: Write the ``torch.export`` archive for model versions registered now.
        http_timeout_s: Per-request timeout against an HTTP server, seconds.
        http_max_retries: Retries per HTTP request.

    Returns:
        What was sent.

    Raises:
        FileNotFoundError: If the journal does not exist.
        ValueError: If it is not a tracker journal (no ``start`` record first).
        Exception: Whatever MLflow raises (unreachable server, ...); a later replay resumes.
    """
    path = Path(journal)
    records = read_journal(path)
    if not records or records[0].get("kind") != "start":
        raise ValueError(f"{path} is not a run journal: its first record is not a 'start' record")
    start = records[0]["data"]
    uri = tracking_uri or start["tracking_uri"]
    with http_fail_fast(http_timeout_s, http_max_retries):
        run, created = _target_run(uri, start, records[0]["time"])
        replayer = _Replayer(run, uri, path.parent, created, pytorch_flavor)
        replayer.summary.created_run = created
        for record in records[1:]:
            replayer.send(record, str(path.resolve()), start["run_id"])
    return replayer.summary


def _target_run(uri: str, start: dict[str, Any], start_time: float) -> tuple[MlflowRun, bool]:
    found = MlflowRun.find(uri, start["experiment"], start.get("mlflow_run_id"), start["run_id"])
    if found is not None:
        return found, False
    same_store = uri == start.get("tracking_uri")
    recorded = start.get("artifact_location") if same_store else None
    location = recorded or default_artifact_location(uri)
    tags = {**(start.get("tags") or {}), RUN_KEY_TAG: start["run_id"]}
    run = MlflowRun.open(uri, start["experiment"], location, start.get("run_name"), tags, int(start_time * 1000))
    return run, True


class _Replayer:
    """Sends records to one run, remembering what the run holds so each check costs one request."""

    def __init__(self, run: MlflowRun, uri: str, root: Path, fresh: bool, pytorch_flavor: bool) -> None:
        self.run, self.root, self.fresh, self.pytorch_flavor = run, root, fresh, pytorch_flavor
        self.summary = ReplaySummary(run.run_id, uri)
        self._points: dict[str, set[tuple[int, int, float]]] = {}
        self._listed: dict[str | None, dict[str, int | None]] = {}

    def send(self, record: dict[str, Any], journal: str, run_key: str) -> None:
        kind, data = record["kind"], record["data"]
        if kind == "params":
            self._params(data, {"eclm.journal": journal, RUN_KEY_TAG: run_key})
        elif kind == "metrics":
            self._metrics(data, record["step"], record["time"])
        elif kind == "epoch_metrics":
            self._metrics(data["metrics"], data["epoch"], record["time"])
        elif kind == "artifact":
            self._artifact(data)
        elif kind == "model_version":
            self._model(data)
        elif kind == "end" and self.run.status() == "RUNNING":
            self.run.terminate(data["status"], int(record["time"] * 1000))
            self.summary.ended = True

    def _params(self, params: dict[str, str], tags: dict[str, str]) -> None:
        held = {} if self.fresh else self.run.params()
        new = {key: value for key, value in params.items() if key not in held}
        self.summary.missing += [f"param {k}: run has {held[k]!r}, journal {v!r}"
                                 for k, v in params.items() if k in held and held[k] != v]
        self.run.log_params(new, tags)
        self.summary.params += len(new)

    def _metrics(self, metrics: dict[str, float], step: int, time_s: float) -> None:
        timestamp_ms = int(time_s * 1000)
        new = {}
        for key, value in metrics.items():
            if key not in self._points:
                self._points[key] = set() if self.fresh else self.run.metric_points(key)
            point = (step, timestamp_ms, float(value))
            if point not in self._points[key]:
                new[key] = value
                self._points[key].add(point)
        if new:
            self.run.log_metrics(new, step, timestamp_ms)
            self.summary.metric_points += len(new)

    def _artifact(self, data: dict[str, Any]) -> None:
        artifact_path = data["artifact_path"]
        folder = posixpath.dirname(artifact_path) or None
        if folder not in self._listed:
            self._listed[folder] = {} if self.fresh else self.run.artifact_sizes(folder)
        if artifact_path in self._listed[folder]:
            return
        local = self.root / data["file"]
        if not local.is_file():
            self.summary.missing.append(f"artifact {artifact_path}: {local} is gone and the run lacks it")
            return
        self.run.log_artifact(local, folder)
        self._listed[folder][artifact_path] = local.stat().st_size
        self.summary.artifacts += 1

    def _model(self, data: dict[str, Any]) -> None:
        name, files = data["registered_model"], data["files"]
        if "sha256" not in data:
            self.summary.missing.append(f"model {data.get('version_tag')}: recorded without an architecture")
            return
        weights, architecture = self.root / files["weights"], self.root / files["architecture"]
        if not (weights.is_file() and architecture.is_file()):
            held = self.run.find_version(name, data["sha256"])
            if held is None:
                self.summary.missing.append(f"model {data['folder']}: files are gone and the registry lacks it")
            else:
                self.summary.reused_versions.append(f"{name}/{held}")
            return
        labels = {key: data[key] for key in ("device", "version_tag") if key in data}
        tags = version_tags(data["sha256"], labels, data["metrics"], data.get("tags", {}))
        version, reused = self.run.publish_model(
            name, data["folder"], weights.read_bytes(), json.loads(architecture.read_text()), tags,
            data.get("alias"), pytorch_flavor=self.pytorch_flavor, alias_on_reuse=False,
        )
        (self.summary.reused_versions if reused else self.summary.model_versions).append(f"{name}/{version}")
