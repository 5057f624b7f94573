"""What a caller and the coordinator hold for requests in a partitioned deployment."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from eclm.runtime.serving import Deployment


@dataclass
class Flight:
    """A micro-batch in the pipeline: the ref of its last stage's output message."""

    batch_id: int
    out_ref: Any
    route_key: Any
    dispatched: float = field(default_factory=time.monotonic)


class RequestHandle:
    """A submitted request's future (results are collected while the caller waits)."""

    def __init__(self, deployment: Deployment, request_id: int) -> None:
        self.deployment = deployment
        self.request_id = request_id

    def done(self) -> bool:
        """Whether the request finished (collects any ready results first, without blocking)."""
        self.deployment.poll(0.0)
        return self.deployment.ledger.records[self.request_id].done

    def result(self, timeout: float | None = None) -> Tensor:
        """The model output for this request.

        Raises:
            TimeoutError: If it is not done within ``timeout`` seconds.
            RuntimeError: If it failed for good (after retries).
        """
        self.deployment.wait([self], timeout)
        rec = self.deployment.ledger.records[self.request_id]
        if rec.error is not None:
            raise RuntimeError(f"request {self.request_id} failed: {rec.error}")
        return rec.output

    def timings(self) -> dict[str, Any]:
        """Per-request timings (see :meth:`RequestRecord.timings`)."""
        return self.deployment.ledger.records[self.request_id].timings()
