"""eclm: derived sub-models, edge adaptation, validated module-wise merge (the platform's cycle)."""

from __future__ import annotations

from benchmarks.baselines.base import AdaptationMethod
from eclm.pipelines.edge_service import EdgeService


class EclmMethod(AdaptationMethod):
    """One ``Platform.run_cycle`` without Ray: summary -> derive -> install -> adapt -> merge.

    Every cycle the device sends its importance summary (computed with the cloud's selector) and
    receives the sub-model derived from the current cloud model (nothing when spec and cloud
    version are unchanged, the cloud's change since its version when only the version changed);
    after adapting, its update (this cycle's change) goes through ``CloudService.merge`` (integrity checks, module-wise aggregation, validation on
    the proxy set, accept / partial / reject) with the platform's default merge settings.
    """

    name = "eclm"
    label = "eclm"

    def deliver(self, service: EdgeService) -> int:
        return self.derive_for(service)

    def finish_cycle(self, uploads: list[dict]) -> dict:
        if not uploads:
            return {"decision": "none"}
        report = self.cloud.merge(uploads)
        return {"decision": report.get("decision"), "accepted": len(report.get("accepted", [])),
                "rejected": len(report.get("rejected", {})), "reason": report.get("reason", "")}
