"""The run journal: an append-only JSONL record of everything a campaign tracker logs.

The journal is the tracker's ground truth. Every record is appended here *before* it is sent to
MLflow, so a tracking server that is down at start, or fails halfway through a campaign, never
loses a parameter, metric or model: the journal holds the complete run either way, and
:func:`~eclm.tracking.replay_journal` pushes it into MLflow later.

Layout for a run journal ``<dir>/<stem>.jsonl``::

    <dir>/<stem>.jsonl                                        one JSON object per line
    <dir>/<stem>/rounds/round_003/merge_report.json           artifact bytes not (yet) in MLflow
    <dir>/<stem>/models/cloud/v0003/model.safetensors         model weights not (yet) in MLflow

Each line is ``{"id": str, "kind": str, "step": int | null, "data": object, "time": float}``:
``id`` is unique (replay uses it to recognise records), ``step`` is the campaign round the record
belongs to (``null`` for run-level records and for the offline stage, whose ``epoch_metrics``
carry their epoch in ``data``), ``time`` is Unix seconds. Artifact and model records cite their
staged files by a path relative to ``<dir>``. Once MLflow holds the bytes, the tracker deletes the
staged files and appends a ``stored`` record ``{"ref": <id>, "uri": ...}``, so the bytes are kept
once, in the artifact store, and the journal keeps the reference.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

#: Record kinds the tracker writes (see :class:`~eclm.tracking.tracker.CampaignTracker`).
RECORD_KINDS = frozenset(
    {
        "start",
        "params",
        "metrics",
        "epoch_metrics",
        "artifact",
        "model_version",
        "stored",
        "warning",
        "degraded",
        "end",
    }
)

_UNSAFE_STEM_CHARS = re.compile(r"[^\w.-]")


def check_artifact_path(artifact_path: str) -> PurePosixPath:
    """Validate a run-relative artifact path such as ``rounds/round_003/merge_report.json``.

    Args:
        artifact_path: POSIX path relative to the run's artifact root.

    Returns:
        The path as a :class:`PurePosixPath`.

    Raises:
        TypeError: If ``artifact_path`` is not a ``str``.
        ValueError: If it is empty, absolute, contains ``..``/``.`` parts or a backslash, or would
            escape the artifact root.
    """
    if not isinstance(artifact_path, str):
        raise TypeError(f"artifact_path must be str, got {type(artifact_path).__name__}")
    path = PurePosixPath(artifact_path)
    bad = (
        not artifact_path
        or "\\" in artifact_path
        or path.is_absolute()
        or any(part in ("..", ".") for part in artifact_path.split("/"))
        or "" in artifact_path.split("/")
    )
    if bad:
        raise ValueError(f"artifact_path {artifact_path!r} must be a clean relative POSIX path")
    return path


def unique_journal_path(directory: Path, stem: str) -> Path:
    """Pick ``<directory>/<stem>.jsonl`` for a new run, never reusing an existing journal.

    Args:
        directory: The fallback directory (created if missing).
        stem: Run name or id; characters other than letters, digits, ``_ . -`` become ``_``.

    Returns:
        A journal path that does not exist yet (``<stem>-2.jsonl``, ``-3`` ... on collisions, so
        two runs with the same name never interleave their records).

    Raises:
        ValueError: If ``stem`` is empty.
    """
    if not stem:
        raise ValueError("journal stem (run name or id) must not be empty")
    directory.mkdir(parents=True, exist_ok=True)
    safe = _UNSAFE_STEM_CHARS.sub("_", stem)
    candidate, suffix = directory / f"{safe}.jsonl", 1
    while candidate.exists() or candidate.with_suffix("").exists():
        suffix += 1
        candidate = directory / f"{safe}-{suffix}.jsonl"
    return candidate


class RunJournal:
    """Append-only JSONL journal of one tracked run, with artifact files stored beside it.

    Each :meth:`append` opens, writes one line and closes the file, so a crash loses at most the
    record being written and other tools can tail the journal while the campaign runs.

    Args:
        path: The ``.jsonl`` file to append to (its directory is created if missing).

    Raises:
        ValueError: If ``path`` does not end in ``.jsonl``.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if self.path.suffix != ".jsonl":
            raise ValueError(f"journal path {self.path} must end in .jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Artifacts live in a folder named like the journal, mirroring their artifact paths.
        self.artifact_root = self.path.with_suffix("")
        self._lock = threading.Lock()  # a background publisher appends "stored" records too

    def append(self, kind: str, data: Any, step: int | None = None) -> dict[str, Any]:
        """Append one record.

        Args:
            kind: One of :data:`RECORD_KINDS`.
            data: JSON-serialisable payload (numpy scalars/arrays are converted with ``tolist``).
            step: Campaign round the record belongs to, or ``None``.

        Returns:
            The record as written, with a fresh ``id``.

        Raises:
            ValueError: If ``kind`` is unknown.
            TypeError: If ``data`` is not JSON-serialisable.
        """
        if kind not in RECORD_KINDS:
            raise ValueError(f"unknown journal record kind {kind!r}; valid kinds: {sorted(RECORD_KINDS)}")
        record = {"id": uuid.uuid4().hex, "kind": kind, "step": step, "data": data, "time": time.time()}
        line = json.dumps(record, default=json_default)
        with self._lock, self.path.open("a", encoding="utf-8") as journal:
            journal.write(line + "\n")
        return record

    def write_artifact(self, artifact_path: str, content: bytes) -> Path:
        """Store artifact bytes beside the journal under their artifact path.

        Args:
            artifact_path: Run-relative POSIX path, e.g. ``models/v3/model.safetensors``.
            content: The file's bytes.

        Returns:
            The local file written, ``<journal stem>/<artifact_path>``.

        Raises:
            TypeError, ValueError: If ``artifact_path`` is invalid (see :func:`check_artifact_path`).
        """
        relative = check_artifact_path(artifact_path)
        target = self.artifact_root.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        return target

    def relative(self, local_path: Path) -> str:
        """Path of a stored artifact relative to the journal's directory (how records cite it)."""
        return local_path.relative_to(self.path.parent).as_posix()

    def discard(self, local_path: Path) -> None:
        """Delete a staged file (MLflow now holds it) and the folders it leaves empty."""
        local_path.unlink(missing_ok=True)
        folder = local_path.parent
        while folder != self.artifact_root.parent and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback: numpy/torch scalars and arrays via ``tolist``, paths as strings.

    Raises:
        TypeError: For anything else, naming the offending type.
    """
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def read_journal(path: Path | str) -> list[dict[str, Any]]:
    """Read every record of a run journal, in the order written.

    Args:
        path: The ``.jsonl`` journal.

    Returns:
        The records (``kind``, ``step``, ``data``, ``time``), oldest first.

    Raises:
        FileNotFoundError: If the journal does not exist.
        ValueError: If a line is not valid JSON (names the line number).
    """
    records = []
    with Path(path).open(encoding="utf-8") as journal:
        for number, line in enumerate(journal, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON record ({error})") from error
    return records
