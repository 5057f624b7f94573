"""The tracking side of the command line: ``eclm ui`` and ``eclm replay-journal``.

``eclm ui`` serves the MLflow UI over one campaign's own store (the SQLite database in its
workdir, or the store its config names), bound to 127.0.0.1. ``eclm replay-journal`` pushes a
journal written during an MLflow outage into MLflow (see :func:`~eclm.tracking.replay_journal`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TextIO

from eclm.tracking.config import default_tracking_uri

_SQLITE = "sqlite:///"
#: The UI only ever listens on loopback; reach it from elsewhere through an SSH tunnel.
UI_HOST = "127.0.0.1"


def campaign_tracking_uri(workdir: Path | str | None = None, config: Path | str | None = None) -> str:
    """The tracking URI a campaign writes to.

    Args:
        workdir: The campaign's working directory (its default store ``eclm-mlruns.db``).
        config: The campaign's YAML; its ``tracking.tracking_uri``, else its workdir's store.
            Takes precedence over ``workdir``.

    Raises:
        FileNotFoundError: If ``config`` does not exist.
        eclm.config.ConfigError: If the config is invalid.
    """
    if config is not None:
        from eclm.config import PlatformConfig

        cfg = PlatformConfig.from_yaml(config)
        return cfg.tracking.tracking_uri or default_tracking_uri(cfg.workdir)
    return default_tracking_uri(workdir if workdir is not None else ".")


def ui_command(tracking_uri: str, port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line serving a campaign's SQLite store on 127.0.0.1.

    Args:
        tracking_uri: ``sqlite:///<path>.db`` of the campaign.
        port: TCP port on 127.0.0.1.

    Returns:
        ``argv`` running this interpreter's MLflow (one worker; artifacts of experiments created
        in the UI go beside the database, like the tracker's).

    Raises:
        ValueError: If the store is not a SQLite file, or the port is out of range.
        FileNotFoundError: If the database does not exist (no campaign ran there yet).
    """
    if not tracking_uri.startswith(_SQLITE) or tracking_uri.endswith(":memory:"):
        raise ValueError(f"eclm ui serves a campaign's SQLite store; {tracking_uri!r} is not one "
                         "(a tracking server already has its own UI)")
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    database = Path(tracking_uri[len(_SQLITE):])
    if not database.is_file():
        raise FileNotFoundError(f"no tracking store at {database}; run a campaign with that workdir first")
    return [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", tracking_uri,
        "--artifacts-destination", str(database.resolve().parent / "eclm-mlartifacts"),
        "--host", UI_HOST, "--port", str(port), "--workers", "1",
    ]


def serve_ui(workdir: Path | None, config: Path | None, port: int = 5000, out: TextIO | None = None) -> int:
    """``eclm ui``: run ``mlflow ui`` over the campaign's store until interrupted.

    Returns:
        The exit code of ``mlflow ui`` (0 after Ctrl-C or when the campaign logs to a server), 2 if
        the config or the store is wrong (the message says which).
    """
    try:
        uri = campaign_tracking_uri(workdir, config)
        if uri.startswith(("http://", "https://")):
            print(f"eclm ui: this campaign logs to the MLflow server {uri}; open it in a browser", file=out)
            return 0
        command = ui_command(uri, port)
    except (FileNotFoundError, ValueError) as error:  # ValueError includes eclm.config.ConfigError
        return _usage_error(error)
    print(f"eclm ui: MLflow UI over {uri} on http://{UI_HOST}:{port} (Ctrl-C stops)", file=out, flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


def replay(journal: Path, tracking_uri: str | None = None, out: TextIO | None = None) -> int:
    """``eclm replay-journal``: replay ``journal`` into MLflow and print what was sent.

    Returns:
        0 on success, 1 if MLflow could not be reached or refused (a later replay resumes), 2 if the
        file is missing or not a run journal.
    """
    from eclm.tracking.replay import replay_journal

    try:
        s = replay_journal(journal, tracking_uri)
    except (FileNotFoundError, ValueError) as error:
        return _usage_error(error)
    except Exception as error:  # noqa: BLE001 - MLflow's errors vary by store; the journal is untouched
        print(f"eclm: replay of {journal} failed: {type(error).__name__}: {error}\n"
              "eclm: nothing is lost; run the replay again once MLflow is reachable", file=sys.stderr)
        return 1
    versions = ", ".join(s.model_versions) or "none"
    print(f"replayed {journal} into run {s.run_id} at {s.tracking_uri}"
          f"{' (new run)' if s.created_run else ''}: {s.params} params, {s.metric_points} metric points, "
          f"{s.artifacts} artifacts, model versions registered: {versions}"
          f"{f' (already held: {len(s.reused_versions)})' if s.reused_versions else ''}"
          f"{', run ended' if s.ended else ''}", file=out)
    for problem in s.missing:
        print(f"  not sent: {problem}", file=out)
    return 0


def _usage_error(error: Exception) -> int:
    print(f"eclm: error: {error}", file=sys.stderr)
    return 2
