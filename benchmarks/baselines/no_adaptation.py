"""NA: the sub-model the cloud first derives for a device, never updated afterwards."""

from __future__ import annotations

from benchmarks.baselines.base import AdaptationMethod
from eclm.pipelines.edge_service import EdgeService


class NoAdaptation(AdaptationMethod):
    """No adaptation: derive once (eclm's derivation from the pretrained cloud model), then keep.

    Installing goes through ``EdgeService.install``, so the sub-model's BatchNorm statistics are
    re-estimated once on the device's first local data, as for every other method; after that
    nothing changes, and nothing is uploaded.
    """

    name = "na"
    label = "NA (no adaptation)"
    adapts = False
    merges = False

    def deliver(self, service: EdgeService) -> int:
        if service.model is not None:
            return 0
        return self.derive_for(service)
