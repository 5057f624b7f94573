"""FedAvg: one small model that fits the weakest device, trained federated by every device."""

from __future__ import annotations

from benchmarks.baselines.base import AdaptationMethod
from benchmarks.baselines.width_prefix import widest_prefix_within
from eclm.modules import ModuleUpdate, merge_module_updates, pack_state, unpack_state
from eclm.modules.deltas import apply_delta
from eclm.modules.exchange import MalformedPayloadError
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.edge_service import EdgeService


class FedAvg(AdaptationMethod):
    """Plain FedAvg on the widest width-prefix slice of the cloud model that the weakest device fits.

    The global model starts as that slice of the pretrained cloud model (same starting weights as
    everyone else). Each cycle every sampled device receives the current global model, fine-tunes
    it with the shared adaptation settings, and the server replaces the global weights by the
    sample-weighted average of the uploads (every tensor, BatchNorm statistics included).
    """

    name = "fedavg"
    label = "FedAvg"

    def __init__(self, cloud: CloudService, services: list[EdgeService]) -> None:
        super().__init__(cloud, services)
        model = self.cloud.model
        weakest = min(self.budgets.values(), key=lambda b: b.max_params or float("inf"))
        self.spec = widest_prefix_within(self.costs, model.model_id, model.layer_sizes, weakest)
        self._payloads: dict = {}

    def spec_for(self, service: EdgeService):
        """The slice this device trains (the same for every device)."""
        return self.spec

    def begin_cycle(self, round_index: int) -> None:
        self._payloads = {}  # the global model changed: re-slice lazily

    def deliver(self, service: EdgeService) -> int:
        spec = self.spec_for(service)
        if spec not in self._payloads:
            sub = self.cloud.model.extract(spec)
            self._payloads[spec] = pack_state(sub.state_dict(), spec, {"method": self.name})
        payload = self._payloads[spec]
        service.install(spec.to_json(), payload, self.info["costs"])
        return len(payload)

    def finish_cycle(self, uploads: list[dict]) -> dict:
        updates = []
        for up in uploads:
            state, spec, meta = unpack_state(up["payload"])
            if spec is None:
                raise MalformedPayloadError(f"upload of {up['device']} carries no spec")
            if meta.get("kind") == "delta":
                # The device trained the global slice it received this cycle and sent its change
                # (the platform's default exchange): FedAvg averages the resulting weights.
                state = apply_delta(self.cloud.model.extract(spec).state_dict(), state)
            updates.append(ModuleUpdate(up["device"], spec, state, up["importance"], int(up["num_samples"])))
        if not updates:
            return {"aggregated": 0}
        backbone = self.cloud.model.backbone
        # With prefix specs, per-module sample-weighted averaging over the holders of each module
        # is plain FedAvg (one common spec) or HeteroFL's overlap averaging (nested specs).
        merged = merge_module_updates(backbone.state_dict(), self.cloud.model.layers, updates, weighting="samples")
        backbone.load_state_dict(merged)
        return {"aggregated": len(updates)}
