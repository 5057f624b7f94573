"""LA: every device fine-tunes its own sub-model; nothing goes back to the cloud."""

from __future__ import annotations

from benchmarks.baselines.base import AdaptationMethod
from eclm.pipelines.edge_service import EdgeService


class LocalAdaptation(AdaptationMethod):
    """Local adaptation only: derive once from the pretrained cloud, then adapt it locally forever.

    The device keeps its adapted sub-model (and replay buffer) from cycle to cycle; updates are
    never uploaded, so devices learn nothing from each other.
    """

    name = "la"
    label = "LA (local only)"
    merges = False

    def deliver(self, service: EdgeService) -> int:
        if service.model is not None:
            return 0
        return self.derive_for(service)
