"""Finished parts of a long benchmark kept on disk, so that a stopped run resumes where it stopped.

A full-mode suite can take hours (on two cores the robustness protocol about 3.5 h, the adaptation
protocol about 2.4 h). Its parts (a campaign, a job) are independent, so each finished part is
written as JSON under ``<results dir>/.progress/<suite>/<fingerprint>/`` the moment it ends, and a
later run of the same suite with the same settings on the same code reads it back instead of
running it again.

The fingerprint is a digest of the suite's settings and of the code that produces the figures
(every ``.py`` file of ``eclm/`` and ``benchmarks/``, by content, and the Python and torch versions): a code change, even an
uncommitted one, starts the suite afresh, while a commit that only touches docs or results does
not. Parts of another fingerprint are deleted when a suite opens its progress.
``python -m benchmarks.run --fresh`` deletes a suite's progress before it runs. Each part keeps the
commit it was measured at (``progress_commit``), so a report can say which runs were resumed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

PROGRESS_DIR = ".progress"
_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
REPO_ROOT = Path(__file__).resolve().parents[1]


def code_digest(root: Path = REPO_ROOT) -> str:
    """SHA-256 over the paths and bytes of every ``.py`` file under ``root/eclm`` and ``root/benchmarks``."""
    h = hashlib.sha256()
    for package in ("eclm", "benchmarks"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "/results/" in f"/{rel}" or "__pycache__" in rel:
                continue
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def fingerprint(settings: str, root: Path = REPO_ROOT) -> str:
    """A short digest of a suite's settings (e.g. its config as JSON), the code (:func:`code_digest`)
    and the Python and torch versions."""
    import torch

    identity = f"{settings}\0{code_digest(root)}\0{sys.version}\0{torch.__version__}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _suite_dir(out_dir: Path | str, suite: str) -> Path:
    return Path(out_dir) / PROGRESS_DIR / suite


class Progress:
    """The finished parts of one suite run, one JSON file per part, under ``directory``.

    A plain directory, so worker processes of the same run open their own ``Progress`` on it.

    Args:
        directory: Where the parts live (created on the first :meth:`put`).
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @classmethod
    def open(cls, out_dir: Path, suite: str, settings: str, root: Path = REPO_ROOT) -> Progress:
        """The progress of ``suite`` with ``settings`` under ``out_dir``; other fingerprints' parts are deleted."""
        base = _suite_dir(out_dir, suite)
        current = base / fingerprint(settings, root)
        if base.is_dir():
            for stale in base.iterdir():
                if stale == current:
                    continue
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        return cls(current)

    def get(self, key: str) -> dict | None:
        """The record of part ``key``, or ``None`` when it has not finished (or its file is unreadable)."""
        path = self._path(key)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict, commit: str | None = None) -> dict:
        """Write part ``key`` (atomically) and return the record as read back, with ``progress_commit``.

        The record goes through JSON either way, so a resumed part and a fresh one are the same
        plain data (lists, not tuples).

        Raises:
            TypeError: If ``record`` is not JSON data.
        """
        record = json.loads(json.dumps(record | {"progress_commit": commit or "unknown"}))
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
        return record

    def run_once(self, key: str, run: Callable[[], dict], commit: str | None = None) -> tuple[dict, bool]:
        """Part ``key``'s kept record, or the record ``run()`` makes, kept at once (:meth:`put`).

        Returns:
            ``(record, resumed)``: ``resumed`` is whether the record was kept before.
        """
        found = self.get(key)
        if found is not None:
            return found, True
        return self.put(key, run(), commit), False

    def keys(self) -> list[str]:
        """The finished parts' keys, sorted."""
        return sorted(p.stem for p in self.directory.glob("*.json")) if self.directory.is_dir() else []

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"progress key must match {_KEY.pattern}, got {key!r}")
        return self.directory / f"{key}.json"


def clear(out_dir: Path, suite: str) -> bool:
    """Delete every part of ``suite`` under ``out_dir``; whether there was any."""
    base = _suite_dir(out_dir, suite)
    existed = base.exists()
    shutil.rmtree(base, ignore_errors=True)
    return existed
