"""Request bookkeeping of a deployment: queue, micro-batches, bounded in-flight, retries, timings.

The ledger is the coordinator's memory and holds no Ray objects, so every rule here is tested
without Ray:

* requests wait in a FIFO queue; a micro-batch takes up to ``micro_batch_size`` of them, and only
  while the requests in flight stay within ``max_in_flight`` (back-pressure on the pipeline);
* a request keeps its input until it completes, so a micro-batch whose pipeline failed (a stage
  actor died, a stage hung) is put back at the *front* of the queue and re-run - no request is
  lost - until a request has used ``1 + max_retries`` attempts, when it fails with the reason;
* each request records its wall times (submitted, dispatched, finished) and the per-stage timings
  of the attempt that succeeded.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class RequestRecord:
    """One request's life.

    Attributes:
        request_id: Id given at submission.
        submitted_at: Wall time (s) of submission.
        dispatched_at: Wall time (s) its successful (or last) micro-batch was dispatched.
        finished_at: Wall time (s) it completed or failed for good.
        attempts: Micro-batches it was sent in (1 + retries).
        output: The model output for this request (``None`` until done).
        error: Why it failed for good (``None`` unless failed).
        stages: Per-stage timing dicts of the successful attempt.
        batch_size: Requests in its successful micro-batch.
        route: Replica/pipeline that served it.
        schedule_s: Seconds the scheduler spent choosing its route (0 without a choice).
    """

    request_id: int
    submitted_at: float
    dispatched_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    output: Tensor | None = None
    error: str | None = None
    stages: list[dict] = field(default_factory=list)
    batch_size: int = 0
    route: Hashable | None = None
    schedule_s: float = 0.0

    @property
    def done(self) -> bool:
        """Completed or failed for good."""
        return self.finished_at is not None

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    def timings(self) -> dict[str, Any]:
        """JSON-able timings: wall ``latency_s`` (submit -> finish), ``queue_s``, ``service_s``
        (dispatch -> finish), ``emulated_s`` (sum of stage node seconds: compute, links), per-stage
        entries, attempts, micro-batch size, route and scheduling seconds."""
        end = self.finished_at
        return {
            "request_id": self.request_id,
            "latency_s": None if end is None else end - self.submitted_at,
            "queue_s": None if self.dispatched_at is None else self.dispatched_at - self.submitted_at,
            "service_s": None if end is None or self.dispatched_at is None else end - self.dispatched_at,
            "emulated_s": math.fsum(s["compute_s"] + s["link_s"] for s in self.stages)
            if self.stages else None,
            "attempts": self.attempts, "micro_batch": self.batch_size, "route": self.route,
            "schedule_s": self.schedule_s, "error": self.error,
            "stages": [{**{k: s[k] for k in ("node", "start", "stop", "compute_s", "link_s", "wall_s")},
                        "codec": s.get("codec", "float32")} for s in self.stages],
        }


@dataclass(frozen=True)
class MicroBatch:
    """Requests sent through the pipeline together.

    Attributes:
        batch_id: Unique id of this dispatch (a retry gets a new id).
        request_ids: The requests, in the order of the batch's rows.
        dispatched_at: Wall time (s) of dispatch.
        route: Replica/pipeline chosen for it (``None`` when there is no choice).
    """

    batch_id: int
    request_ids: tuple[int, ...]
    dispatched_at: float
    route: Hashable | None = None


class RequestLedger:
    """Queue, in-flight set and records of a deployment's requests.

    Args:
        max_in_flight: Requests allowed in the pipeline at once (>= 1).
        micro_batch_size: Requests per micro-batch (1 <= size <= ``max_in_flight``).
        max_retries: Extra attempts per request after a failed one (>= 0).
        sample_shape: Shape every request must have, e.g. ``(3, 32, 32)``; ``None`` = any.

    Raises:
        ValueError: If the limits are inconsistent.
    """

    def __init__(self, max_in_flight: int, micro_batch_size: int = 1, max_retries: int = 3,
                 sample_shape: Sequence[int] | None = None) -> None:
        if not (isinstance(max_in_flight, int) and max_in_flight >= 1):
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        if not (isinstance(micro_batch_size, int) and 1 <= micro_batch_size <= max_in_flight):
            raise ValueError(f"micro_batch_size must be an int in [1, max_in_flight={max_in_flight}], "
                             f"got {micro_batch_size!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.max_in_flight = max_in_flight
        self.micro_batch_size = micro_batch_size
        self.max_retries = max_retries
        self.sample_shape = None if sample_shape is None else tuple(int(d) for d in sample_shape)
        self.records: dict[int, RequestRecord] = {}
        self._inputs: dict[int, Tensor] = {}
        self._queue: deque[int] = deque()
        self._flight: dict[int, MicroBatch] = {}
        self._next_request = 0
        self._next_batch = 0
        self.retries = 0

    # ------------------------------------------------------------------ submission
    def submit(self, x: Tensor, now: float) -> int:
        """Queue one request.

        Args:
            x: One sample of ``sample_shape`` (a leading batch dimension of 1 is dropped).
            now: Wall time (s).

        Returns:
            The request id.

        Raises:
            TypeError: If ``x`` is not a tensor.
            ValueError: If ``x`` does not have ``sample_shape``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"a request must be a torch.Tensor, got {type(x).__name__}")
        sample = _one_sample(x, self.sample_shape)
        rid = self._next_request
        self._next_request += 1
        self._inputs[rid] = sample
        self.records[rid] = RequestRecord(rid, now)
        self._queue.append(rid)
        return rid

    @property
    def pending(self) -> int:
        """Requests waiting in the queue."""
        return len(self._queue)

    @property
    def in_flight_requests(self) -> int:
        return sum(len(b.request_ids) for b in self._flight.values())

    @property
    def in_flight(self) -> Mapping[int, MicroBatch]:
        """Micro-batches in the pipeline, by batch id (read-only view)."""
        return dict(self._flight)

    def next_size(self) -> int:
        """Requests the next micro-batch would take if dispatched now (0 = none may go)."""
        n = min(self.micro_batch_size, len(self._queue))
        return n if n and self.in_flight_requests + n <= self.max_in_flight else 0

    def take_batch(self, now: float, route: Hashable | None = None, schedule_s: float = 0.0) -> MicroBatch | None:
        """Move the next micro-batch from the queue into flight, if the in-flight bound allows.

        Args:
            now: Wall time (s) of dispatch.
            route: Replica/pipeline chosen for it.
            schedule_s: Seconds spent choosing ``route``, charged to every request in it.

        Returns:
            The :class:`MicroBatch`, or ``None`` if the queue is empty or the pipeline is full.
        """
        n = self.next_size()
        if n == 0:
            return None
        ids = tuple(self._queue.popleft() for _ in range(n))
        batch = MicroBatch(self._next_batch, ids, now, route)
        self._next_batch += 1
        self._flight[batch.batch_id] = batch
        for rid in ids:
            rec = self.records[rid]
            rec.attempts += 1
            rec.dispatched_at, rec.route, rec.schedule_s = now, route, schedule_s
        return batch

    def inputs(self, batch: MicroBatch) -> Tensor:
        """The batch's inputs stacked along a new leading dimension, ``(len(batch), C, H, W)``."""
        return torch.stack([self._inputs[rid] for rid in batch.request_ids])

    # ------------------------------------------------------------------ outcomes
    def complete(self, batch_id: int, outputs: Tensor, stages: Sequence[dict], now: float) -> list[int]:
        """Record a finished micro-batch.

        Args:
            batch_id: The batch.
            outputs: ``(len(batch), ...)`` rows in the batch's request order.
            stages: Per-stage timing dicts of this run.
            now: Wall time (s).

        Returns:
            The completed request ids.

        Raises:
            KeyError: If ``batch_id`` is not in flight.
            ValueError: If ``outputs`` has the wrong number of rows.
        """
        batch = self._flight.pop(batch_id)
        if outputs.shape[0] != len(batch.request_ids):
            self._flight[batch_id] = batch
            raise ValueError(f"batch {batch_id} has {len(batch.request_ids)} requests but {outputs.shape[0]} outputs")
        for row, rid in enumerate(batch.request_ids):
            rec = self.records[rid]
            rec.output, rec.finished_at, rec.stages = outputs[row].clone(), now, list(stages)
            rec.batch_size = len(batch.request_ids)
            del self._inputs[rid]  # done: the input is no longer needed for a retry
        return list(batch.request_ids)

    def fail(self, batch_id: int, reason: str, now: float) -> tuple[list[int], list[int]]:
        """Record a failed micro-batch: retry its requests first, or fail those out of attempts.

        Returns:
            ``(requeued, failed)`` request ids.

        Raises:
            KeyError: If ``batch_id`` is not in flight.
        """
        batch = self._flight.pop(batch_id)
        requeued, failed = [], []
        for rid in batch.request_ids:
            rec = self.records[rid]
            if rec.attempts <= self.max_retries:
                requeued.append(rid)
            else:
                rec.error, rec.finished_at = f"failed after {rec.attempts} attempts: {reason}", now
                self._inputs.pop(rid, None)
                failed.append(rid)
        # Front of the queue, original order: retried requests have waited longest.
        self._queue.extendleft(reversed(requeued))
        self.retries += len(requeued)
        return requeued, failed

    def all_done(self, request_ids: Sequence[int]) -> bool:
        return all(self.records[rid].done for rid in request_ids)

    def forget(self, request_ids: Sequence[int]) -> None:
        """Drop records of finished requests (a long-running deployment's memory stays bounded)."""
        for rid in request_ids:
            if self.records[rid].done:
                del self.records[rid]


def _one_sample(x: Tensor, shape: tuple[int, ...] | None) -> Tensor:
    if shape is not None and x.dim() == len(shape) + 1:
        if x.shape[0] != 1:
            raise ValueError(f"submit one sample {shape} at a time, got a batch of shape {tuple(x.shape)}; "
                             "use infer(batch) for batches")
        x = x[0]
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"a request must have shape {shape} (or (1, *{shape})), got {tuple(x.shape)}")
    return x.detach()
