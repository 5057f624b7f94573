"""Statistics of a serving session: latency percentiles, throughput, stage load, emulated replay.

Two kinds of figures are reported side by side, because on one small machine they differ:

* **wall-clock** - what the driver measured: submit -> result latencies and completed requests
  per second, including Ray's per-call overhead, object transfers, and the host's cores being
  shared by every stage actor, Ray and the driver;
* **emulated** - what the same schedule would take on real nodes of the configured shares and
  links: every stage reports its node seconds (CPU time / share, plus link time), and
  :func:`replay_emulated` replays the session's micro-batches through FIFO nodes with the same
  in-flight bound. It leaves out Ray overhead and host contention, which is what the emulation
  can vouch for; the wall-clock figures show how much of it a 2-core host realises.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from eclm.serving.requests import RequestRecord


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., ...}`` of ``values`` (linear interpolation; NaN when empty)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return {f"p{q:g}": (float(np.percentile(arr, q)) if arr.size else math.nan) for q in qs}


@dataclass(frozen=True)
class BatchTrace:
    """A completed micro-batch as the replay sees it.

    Attributes:
        size: Requests in the micro-batch.
        hops: ``((resource, seconds), ...)`` in route order. A resource is a node index, or
            ``("link", node)`` for node's outgoing link when stages hand off asynchronously (the
            link is then a pipeline step of its own); with store-and-forward on the sender a
            node's seconds include its outgoing link time.
    """

    size: int
    hops: tuple[tuple[Hashable, float], ...]


def stage_hops(stages: Sequence[dict]) -> tuple[tuple[Hashable, float], ...]:
    """The replay resources one micro-batch's stage timings occupy, in order (see :class:`BatchTrace`)."""
    hops: list[tuple[Hashable, float]] = []
    for s in stages:
        node, compute, link = int(s["node"]), float(s["compute_s"]), float(s["link_s"])
        if s.get("overlap"):
            hops.append((node, compute))
            if link > 0:
                hops.append((("link", node), link))
        else:
            hops.append((node, compute + link))
    return tuple(hops)


def batch_traces(records: Sequence[RequestRecord]) -> list[BatchTrace]:
    """The completed micro-batches of ``records`` in dispatch order (one trace per batch)."""
    seen: dict[object, tuple[float, BatchTrace]] = {}
    for rec in records:
        if not rec.ok or not rec.stages:
            continue
        key = rec.stages[0].get("batch_id", ("request", rec.request_id))
        if key in seen:
            continue
        seen[key] = (rec.dispatched_at or 0.0, BatchTrace(rec.batch_size, stage_hops(rec.stages)))
    return [t for _, t in sorted(seen.values(), key=lambda item: item[0])]


@dataclass(frozen=True)
class ReplayResult:
    """Outcome of :func:`replay_emulated`.

    Attributes:
        makespan_s: Emulated seconds from the first admission to the last completion.
        requests: Requests replayed.
        batch_latency_s: Emulated admission -> completion seconds per micro-batch.
        batch_finish_s: Emulated completion time of each micro-batch.
        batch_sizes: Requests per micro-batch.
    """

    makespan_s: float
    requests: int
    batch_latency_s: tuple[float, ...]
    batch_finish_s: tuple[float, ...] = ()
    batch_sizes: tuple[int, ...] = ()

    @property
    def throughput_rps(self) -> float:
        """Emulated requests per second (``nan`` for an empty replay)."""
        if self.requests == 0:
            return math.nan
        return math.inf if self.makespan_s == 0 else self.requests / self.makespan_s

    @property
    def steady_throughput_rps(self) -> float:
        """Requests per second once the pipeline is full (see :func:`steady_rate`)."""
        return steady_rate(self.batch_finish_s, self.batch_sizes)


def replay_emulated(traces: Sequence[BatchTrace], max_in_flight: int) -> ReplayResult:
    """Replay micro-batches through FIFO nodes in emulated time, all queued at time 0.

    A micro-batch is admitted once the requests in flight leave room for it (the same bound the
    deployment enforces); each hop starts when both the micro-batch has left its previous hop and
    the node has finished its previous work. With ``max_in_flight`` equal to the micro-batch size
    this is one-at-a-time service and each latency is the sum of the hops.

    Args:
        traces: Micro-batches in dispatch order.
        max_in_flight: Requests allowed in flight (>= the largest micro-batch).

    Returns:
        The :class:`ReplayResult`.

    Raises:
        ValueError: If a micro-batch is larger than ``max_in_flight``.
    """
    node_free: dict[Hashable, float] = defaultdict(float)
    flight: list[tuple[float, int]] = []
    in_flight = 0
    admit = 0.0
    latencies, finishes = [], []
    end = 0.0
    for trace in traces:
        if trace.size > max_in_flight:
            raise ValueError(f"a micro-batch of {trace.size} exceeds max_in_flight={max_in_flight}")
        while in_flight + trace.size > max_in_flight:
            finish, size = heapq.heappop(flight)
            admit, in_flight = max(admit, finish), in_flight - size
        t = admit
        for node, seconds in trace.hops:
            t = max(t, node_free[node]) + seconds
            node_free[node] = t
        heapq.heappush(flight, (t, trace.size))
        in_flight += trace.size
        latencies.append(t - admit)
        finishes.append(t)
        end = max(end, t)
    return ReplayResult(end, sum(t.size for t in traces), tuple(latencies), tuple(finishes),
                        tuple(t.size for t in traces))


def steady_rate(finish_times: Sequence[float], sizes: Sequence[int]) -> float:
    """Requests per second between the first and the last completion.

    A short run's plain rate (requests / time from the start) counts the pipeline filling up:
    one full traversal before anything completes, which costs a deep pipeline more than a single
    stage. Counting from the first completion, the requests completed after it over the time
    after it, measures the rate the pipeline sustains.

    Args:
        finish_times: Completion time of each micro-batch (any order).
        sizes: Requests in each micro-batch (same order).

    Returns:
        Requests per second (``nan`` with fewer than two completions at distinct times).
    """
    pairs = sorted(zip(finish_times, sizes, strict=True))
    if len(pairs) < 2 or pairs[-1][0] <= pairs[0][0]:
        return math.nan
    return sum(size for _, size in pairs[1:]) / (pairs[-1][0] - pairs[0][0])


def throughput_timeline(finish_times: Sequence[float], start: float, window_s: float,
                        end: float | None = None) -> tuple[list[float], list[float]]:
    """Completed requests per second in consecutive windows.

    Args:
        finish_times: Wall times (s) requests completed.
        start: Wall time (s) of the session start.
        window_s: Window length (s, > 0).
        end: Last time covered (default: the last completion).

    Returns:
        ``(window centres relative to start, requests/s per window)``.

    Raises:
        ValueError: If ``window_s`` is not positive.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, got {window_s!r}")
    if not finish_times:
        return [], []
    last = max(finish_times) if end is None else end
    n = max(1, math.ceil((last - start) / window_s))
    counts = [0] * n
    for t in finish_times:
        k = min(max(int((t - start) // window_s), 0), n - 1)
        counts[k] += 1
    return [(k + 0.5) * window_s for k in range(n)], [c / window_s for c in counts]


def summarize(records: Sequence[RequestRecord], max_in_flight: int) -> dict[str, float | dict]:
    """Session figures from request records (JSON-able).

    Returns:
        ``requests``, ``failed``, ``retried`` (extra attempts), ``wall_s`` (first dispatch -> last
        completion), ``throughput_rps`` (wall), ``steady_throughput_rps`` and
        ``emulated_steady_throughput_rps`` (:func:`steady_rate`, wall and replay), ``latency_ms`` / ``service_ms`` percentiles
        (wall; submit -> result and dispatch -> result), ``emulated_latency_ms`` percentiles
        (sum of a request's stage node seconds), ``emulated_throughput_rps`` and
        ``emulated_queued_ms`` percentiles (replay: admission -> completion of each micro-batch with
        every request queued at once, i.e. latency under saturation),
        ``stage_load`` (per node, and per link ``"link<node>"`` with asynchronous hand-off: emulated
        seconds busy / wall seconds, and micro-batches served),
        ``schedule_us_per_request`` (mean scheduler time per request).
    """
    ok = [r for r in records if r.ok]
    failed = sum(1 for r in records if r.done and r.error is not None)
    out: dict[str, float | dict] = {"requests": len(ok), "failed": failed,
                                    "retried": sum(max(r.attempts - 1, 0) for r in records)}
    if not ok:
        return out
    first = min(r.dispatched_at for r in ok)
    last = max(r.finished_at for r in ok)
    wall = max(last - first, 1e-9)
    timings = [r.timings() for r in ok]
    traces = batch_traces(ok)
    busy: dict[str, float] = defaultdict(float)
    served: dict[str, int] = defaultdict(int)
    for trace in traces:
        for resource, seconds in trace.hops:
            name = f"link{resource[1]}" if isinstance(resource, tuple) else str(resource)
            busy[name] += seconds
            served[name] += 1
    replay = replay_emulated(traces, max_in_flight)
    out.update({
        "wall_s": wall,
        "throughput_rps": len(ok) / wall,
        "steady_throughput_rps": steady_rate(*_wall_batches(ok)),
        "emulated_steady_throughput_rps": replay.steady_throughput_rps,
        "latency_ms": {k: 1e3 * v for k, v in percentiles([t["latency_s"] for t in timings]).items()},
        "service_ms": {k: 1e3 * v for k, v in percentiles([t["service_s"] for t in timings]).items()},
        "emulated_latency_ms": {k: 1e3 * v for k, v in percentiles([t["emulated_s"] for t in timings]).items()},
        "emulated_throughput_rps": replay.throughput_rps,
        "emulated_queued_ms": {k: 1e3 * v for k, v in percentiles(replay.batch_latency_s).items()},
        "stage_load": {n: {"busy_fraction": busy[n] / wall, "micro_batches": served[n]} for n in sorted(busy)},
        "schedule_us_per_request": 1e6 * float(np.mean([r.schedule_s for r in ok])),
    })
    return out


def _wall_batches(records: Sequence[RequestRecord]) -> tuple[list[float], list[int]]:
    """Wall completion time and size of each completed micro-batch."""
    seen: dict[object, tuple[float, int]] = {}
    for rec in records:
        key = rec.stages[0].get("batch_id") if rec.stages else ("request", rec.request_id)
        seen.setdefault(key, (rec.finished_at, rec.batch_size or 1))
    return [t for t, _ in seen.values()], [n for _, n in seen.values()]
