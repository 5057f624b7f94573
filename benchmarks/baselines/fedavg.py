"""FedAvg as a cloud service: one width-prefix slice that fits every device, averaged by samples.

:class:`FedAvgCloud` is a :class:`~eclm.pipelines.cloud_service.CloudService` whose ``derive``
ships a width-prefix slice of the cloud model instead of eclm's derivation and whose ``merge`` is
the plain sample-weighted average of the uploads, without validation. It runs behind the
platform's own cycle (:class:`~eclm.campaign.coordinator.CycleCoordinator` with eclm's
:class:`~eclm.campaign.strategy.ModularStrategy`, which asks the cloud endpoint to derive and to
merge), so it could run as a Ray actor as well as in-process.
"""

from __future__ import annotations

from benchmarks.baselines.width_prefix import widest_prefix_within
from eclm.campaign.messages import AttributedUpdate, DeviceSummary, MergeOutcome, Resources, SubModelPackage
from eclm.config import DeviceConfig, PlatformConfig
from eclm.modules import SubModelSpec, merge_module_updates, pack_state
from eclm.pipelines.cloud_service import CloudService
from eclm.pipelines.upload_admission import admit


def configured_resources(device: DeviceConfig) -> Resources:
    """A device's resources as its config states them (what ``EdgeService.profile`` reports).

    Raises:
        ValueError: If the device measures its resources on its node (they are unknown here).
    """
    if device.measure:
        raise ValueError(f"device {device.name!r} measures its resources on its node; the cloud cannot know them")
    return Resources(memory_mb=device.memory_mb, gflops=device.gflops, bandwidth_mbps=device.bandwidth_mbps,
                     params_fraction=device.params_fraction)


class FedAvgCloud(CloudService):
    """Plain FedAvg on the widest width-prefix slice of the cloud model that every device fits.

    The global model starts as that slice of the pretrained cloud model (the same starting
    weights as every other method). Each cycle every sampled device receives the current global
    slice in full (float32), fine-tunes it with the shared adaptation settings, and the server
    replaces the global weights by the sample-weighted average of the uploads (every tensor,
    BatchNorm statistics and the classifier included; delta uploads are re-based on the slice).
    """

    def __init__(self, config: PlatformConfig, threads: int = 1) -> None:
        super().__init__(config, threads)
        self._common: SubModelSpec | None = None

    def width_spec(self, summary: DeviceSummary) -> SubModelSpec:
        """The slice every device trains: the narrowest of the devices' widest fitting prefixes.

        Budgets are the cloud's own (:meth:`CloudService.budget`) from the configured resources of
        every device of the population, not only the devices of this cycle.
        """
        if self._common is None:
            specs = [self._widest(d.name, configured_resources(d)) for d in self.cfg.devices]
            self._common = min(specs, key=lambda s: s.num_modules())
        return self._common

    def _widest(self, device: str, resources: Resources) -> SubModelSpec:
        m = self.model
        return widest_prefix_within(m.costs(), m.model_id, m.layer_sizes, self.budget(device, resources))

    def derive(self, summary: DeviceSummary) -> SubModelPackage:
        """The device's width-prefix slice of the current global model: in full (float32, as
        published), or with the platform's shared codec (``adaptation.delta_dtype`` other than
        float32) the change since the version the device holds, which it adds to that version
        (``adaptation.keep_local: false``), so it holds the global slice again.

        Raises:
            ValueError: If no width-prefix slice fits a device's budget.
        """
        spec = self.width_spec(summary)
        held = summary.held
        if self.cfg.adaptation.delta_dtype != "float32":
            same = held is not None and held.spec == spec
            payload, _, delivery = self._package(summary.device, spec, held if same else None)  # no respec: eclm's own
            delivery = delivery if same or held is None else "new_spec"
        else:
            payload = pack_state(self.model.extract(spec).state_dict(), spec,
                                 {"version": self.version, "device": summary.device},
                                 self.cfg.adaptation.wire_compression)
            delivery = "first" if held is None else "weights"
        return SubModelPackage(device=summary.device, spec=spec, payload=payload, version=self.version,
                               budget=self.budget(summary.device, summary.resources).limits(),
                               cost=self.model.costs().total(spec), delivery=delivery)

    def merge(self, uploads: list[AttributedUpdate]) -> MergeOutcome:
        """Replace the global weights by the sample-weighted average of the uploads (no validation).

        Uploads are decoded and attributed by the platform's admission
        (:mod:`eclm.pipelines.upload_admission`); a malformed one is left out with its reason.
        Per-module averaging over the holders of each module is plain FedAvg for one common
        prefix spec and HeteroFL's overlap averaging for nested prefix specs.
        """
        admission = admit(uploads, self.model.layer_sizes, self._rebase)
        if not admission.updates:
            return MergeOutcome(decision="reject", reason="no admissible upload", rejected=admission.rejected,
                                version=self.version)
        backbone = self.model.backbone
        backbone.load_state_dict(merge_module_updates(backbone.state_dict(), self.model.layers, admission.updates,
                                                      weighting="samples"))
        self.version += 1
        self._remember_version()
        accepted = tuple(u.device_id for u in admission.updates)
        return MergeOutcome(decision="accept" if not admission.rejected else "partial",
                            reason=f"sample-weighted average of {len(accepted)} uploads, not validated",
                            accepted=accepted, rejected=admission.rejected, version=self.version)
