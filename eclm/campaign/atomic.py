"""Crash-safe file writes: a file is either absent or complete, never half-written.

Every durable file of a campaign goes through :func:`write_atomic`: the bytes go to a temporary
name in the same directory, are flushed and fsync'ed, and the temporary file is renamed over the
final name (atomic on POSIX file systems), then the directory entry is fsync'ed. A process
killed at any point leaves the old file or the new one, plus at worst a ``.tmp-*`` file that
readers ignore.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically and durably.

    Args:
        path: Final file path (its directory is created if needed).
        data: The file's complete content.

    Returns:
        The sha256 of ``data`` (hex).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return sha256_bytes(data)


def write_json_atomic(path: Path, value: Any) -> str:
    """:func:`write_atomic` of ``value`` as indented JSON (keys sorted, so equal states give equal files)."""
    return write_atomic(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def write_once(path: Path, data: bytes) -> str:
    """Write a content file that must never change once written.

    A file that already exists with the same content is left untouched (so re-running a step
    after a crash is harmless); one with different content is an error, because something
    else claims the same name.

    Raises:
        FileExistsError: If ``path`` exists with different bytes.
    """
    digest = sha256_bytes(data)
    if Path(path).exists():
        if sha256_file(Path(path)) != digest:
            raise FileExistsError(f"{path} exists with different content; refusing to overwrite it")
        return digest
    return write_atomic(path, data)


__all__ = ["TMP_PREFIX", "sha256_bytes", "sha256_file", "write_atomic", "write_json_atomic", "write_once"]
