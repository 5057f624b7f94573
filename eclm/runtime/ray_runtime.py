"""Ray start-up bound to loopback, and failure-tolerant result collection."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Must be set before Ray starts: makes a local Ray (and ray.cluster_utils.Cluster) bind to
# 127.0.0.1 instead of the machine's first non-loopback address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError  # noqa: E402

from eclm.failures import (  # noqa: E402
    ActorCallError,
    ActorFailure,
    exception_from_traceback,
    one_line,
    root_cause_line,
    strip_ansi,
)
from eclm.resources import CLOUD_RESOURCE, EDGE_RESOURCE  # noqa: E402

log = logging.getLogger("eclm.runtime")

def ray_started() -> bool:
    return ray.is_initialized()


def start_ray(address: str | None, *, num_cpus: float | None, num_devices: int) -> bool:
    """Start a local Ray on loopback (no address) or connect to a cluster.

    Without ``address`` the ``RAY_ADDRESS`` environment variable is used when set (``ray job
    submit`` sets it for the job's entrypoint, so a submitted ``eclm run`` joins its cluster);
    otherwise a new local Ray gets one ``cloud`` unit and one ``edge`` slot per device, so a
    single machine hosts the whole platform. Returns ``True`` if this call started/connected Ray
    (and so should shut it down), ``False`` if Ray was already initialised.

    Raises:
        ConnectionError: If the cluster cannot be reached; one line naming the cause (for a
            missing or wrong auth token: how to provide it, see docs/cluster.md).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ray.init(
            address="local",  # always a new local instance, never an unrelated Ray already running here
            num_cpus=num_cpus,
            resources={CLOUD_RESOURCE: 1, EDGE_RESOURCE: max(num_devices, 1)},
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        _connect(address)
    return True


def _connect(address: str) -> None:
    """``ray.init(address)``; Ray's retry chatter on stderr is shown only when it succeeds."""
    with _captured_stderr() as captured:
        try:
            ray.init(address=address, log_to_driver=False)
            failure = None
        except (ConnectionError, RuntimeError, ValueError, RayError) as err:  # ValueError: a malformed address
            failure = err
    if failure is None:
        sys.stderr.write(captured[0])
        return
    log.debug("connecting to %s failed; Ray said:\n%s", address, captured[0])
    if _auth_failed(failure, captured[0]):
        raise ConnectionError(auth_token_help(address)) from failure
    raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: {root_cause_line(failure)}") from failure


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (Ray's C++ core writes there too) into a list's only item."""
    sys.stderr.flush()
    saved = os.dup(2)
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def _auth_failed(err: BaseException, output: str) -> bool:
    chain, seen = [], err
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain) + output
    return (any(type(e).__name__ == "AuthenticationError" for e in chain)
            or "InvalidAuthToken" in text or "authentication token" in text)


def auth_token_help(address: str) -> str:
    """The one-line message for a driver whose auth token the cluster at ``address`` rejects."""
    held = _token_source()
    has = f"the token this driver holds ({held}) is not the cluster's" if held else "this driver holds no token"
    return (f"cannot connect to the Ray cluster at {address!r}: it requires its auth token and {has}. "
            "Copy the cluster's token (`ray get-auth-token` on the head) to ~/.ray/auth_token here, or set "
            "RAY_AUTH_TOKEN_PATH=<file> or RAY_AUTH_TOKEN=<token>, and export RAY_AUTH_MODE=token "
            "(docs/cluster.md, \"The auth token\")")


def _token_source() -> str | None:
    """Where Ray would read this process's auth token from (the token itself is never read)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).expanduser().is_file():
        return f"RAY_AUTH_TOKEN_PATH={path}"
    if (Path.home() / ".ray" / "auth_token").is_file():
        return "~/.ray/auth_token"
    return None


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def put(value: Any):
    return ray.put(value)


def kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead
        pass


def time_call(make_ref, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds for ``ray.get(make_ref())``."""
    import time

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ray.get(make_ref())
        best = min(best, time.perf_counter() - start)
    return best


def gather(refs: dict[str, Any], timeout: float, each: Callable[[str, Any], None] | None = None
           ) -> tuple[dict[str, Any], dict[str, ActorFailure]]:
    """Wait for every ref; a dead actor, an exception or a timeout is a failure, not a crash.

    Args:
        refs: ``{key: ObjectRef}``.
        timeout: Seconds to wait for all of them.
        each: Called as ``each(key, result)`` for every successful result as soon as it is
            ready, in completion order (e.g. to hand an upload on while others still compute).

    Returns:
        ``(results, failures)`` keyed like ``refs``; each failure names the root cause raised in
        the actor (:class:`~eclm.failures.ActorFailure`), the full remote text is logged at DEBUG.
    """
    results: dict[str, Any] = {}
    failures: dict[str, ActorFailure] = {}
    keys = {ref: key for key, ref in refs.items()}
    waiting = list(refs.values())
    deadline = time.monotonic() + timeout
    while waiting:  # all at once, or one at a time when each result is handed on
        ready, waiting = ray.wait(waiting, num_returns=1 if each is not None else len(waiting),
                                  timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        for ref in ready:
            key = keys[ref]
            try:
                results[key] = ray.get(ref)
            except RayError as err:
                failures[key] = failure_from(key, err)
                log.debug("%s failed: %s\n%s", key, failures[key].message, failures[key].detail)
                continue
            if each is not None:
                each(key, results[key])
    for ref in waiting:
        key = keys[ref]
        failures[key] = ActorFailure(key, "timeout", f"TimeoutError: no answer within {timeout:.0f} s", "TimeoutError")
        ray.cancel(ref, force=False)
    return {k: results[k] for k in refs if k in results}, {k: failures[k] for k in refs if k in failures}


def gather_all(refs: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Results of calls that must all succeed (e.g. cloud calls).

    Raises:
        ActorCallError: If any call failed; it carries every :class:`ActorFailure`.
    """
    results, failures = gather(refs, timeout)
    if failures:
        raise ActorCallError(failures)
    return results


def failure_from(key: str, err: RayError, depth: int = 0) -> ActorFailure:
    """The :class:`ActorFailure` for a Ray exception: the root cause as raised inside the actor.

    A method that raised gives ``RayTaskError`` (its ``cause`` is the actor's exception); an
    actor whose constructor raised gives ``ActorDiedError`` whose text holds the remote traceback;
    a process that died (killed, out of memory) gives ``ActorDiedError`` with Ray's reason.
    """
    detail = strip_ansi(str(err))
    if isinstance(err, RayActorError):
        if err.actor_init_failed:
            kind_name, message = exception_from_traceback(detail)
            kind_name = kind_name or type(err).__name__
            return ActorFailure(key, "dead", one_line(f"{kind_name}: {message}"), kind_name, detail)
        reason = " ".join(line for line in detail.splitlines() if not line.startswith("\t"))
        return ActorFailure(key, "dead", one_line(f"{type(err).__name__}: {reason}"), type(err).__name__, detail)
    if isinstance(err, GetTimeoutError):
        return ActorFailure(key, "timeout", one_line(f"TimeoutError: {detail}"), "TimeoutError", detail)
    cause = getattr(err, "cause", None) if isinstance(err, RayTaskError) else None
    if isinstance(cause, RayError) and depth < 5:  # a remote call inside the actor failed
        inner = failure_from(key, cause, depth + 1)
        return ActorFailure(key, "error", inner.message, inner.error_type, detail)
    if cause is not None and not isinstance(cause, RayError):
        return ActorFailure(key, "error", one_line(f"{type(cause).__name__}: {cause}"), type(cause).__name__, detail)
    kind_name, message = exception_from_traceback(detail)
    kind_name = kind_name or type(err).__name__
    return ActorFailure(key, "error", one_line(f"{kind_name}: {message}"), kind_name, detail)
