"""The split-learning methods of the cloud service (the server side of a split round).

Mixed into :class:`~eclm.pipelines.cloud_service.CloudService`; the protocol is driven by
:mod:`eclm.campaign.split_round`, the planning lives in :mod:`eclm.pipelines.split_planning` and
the server session in :mod:`eclm.pipelines.split_cloud`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from eclm.campaign.messages import DeviceSummary, DeviceUpdate
from eclm.modules import pack_state
from eclm.pipelines.split_cloud import SplitServerSession

if TYPE_CHECKING:
    from eclm.split import BlockCosts, SplitDevice, SplitPlan
    from eclm.split.config import SplitConfig


class SplitCloudMixin:
    """``split_*`` endpoint methods; expects ``cfg``, ``model`` and ``version`` on the host class."""

    _split: SplitServerSession | None = None
    _split_devices: dict[str, dict] = {}

    def split_route(self, summary: DeviceSummary) -> str | None:
        """``auto`` mode: why the device must train split (local training does not fit), or ``None``."""
        from eclm.pipelines.split_planning import local_training_fits

        a = self.cfg.adaptation
        fits, reason = local_training_fits(
            self.model, summary.device, [list(r) for r in summary.importance], summary.resources.as_dict(),
            batch_size=a.batch_size, target_step_seconds=a.target_step_seconds,
            max_transfer_seconds=a.max_transfer_seconds)
        return None if fits else reason

    def split_prepare(self, devices: list[dict]) -> dict:
        """Plan a split round and open the server session; returns the plan and device parts."""
        from eclm.pipelines.profiler import measure_gflops
        from eclm.pipelines.split_planning import prepare_split_round

        classes = sorted({int(c) for d in devices for c in d.get("classes", [])})
        self._split, info = prepare_split_round(
            self.model, self.cfg.split, devices, server_gflops=measure_gflops(),
            allowed_classes=classes if self.cfg.adaptation.restrict_to_local_classes else None,
            planner=self.plan_split_cuts)
        self._split_devices = {d["name"]: d for d in devices}
        info["cost"] = self.model.costs().total(self._split.spec)
        for name, dev in info["devices"].items():
            dev["payload"] = self._split.device_payload(name, version=self.version)
        return info

    def plan_split_cuts(self, config: SplitConfig, costs: BlockCosts, devices: Sequence[SplitDevice],
                        total_bandwidth: float, server_speed: float, *, client_sizes: Sequence[int]) -> SplitPlan:
        """The cut and bandwidth-share plan of a split round: the configured policy
        (:func:`eclm.split.plan_cuts`). Not an endpoint method; a subclass may pin a plan."""
        from eclm.split.factory import plan_cuts

        return plan_cuts(config, costs, devices, total_bandwidth, server_speed, client_sizes=client_sizes)

    def _session(self) -> SplitServerSession:
        if self._split is None:
            raise RuntimeError("no split round is open on the cloud (split_prepare was not called)")
        return self._split

    def split_epoch_plan(self, epoch: int) -> list[list[int]]:
        return self._session().epoch_plan(epoch)

    def split_server_step(self, epoch: int, step: int, *messages: bytes) -> list:
        """One global step; returns one gradient per message, then the step record."""
        session = self._session()
        grads = session.server_step(epoch, step, messages)
        return [*grads, session.records[-1]]

    def split_aggregate(self, *ends: dict) -> list:
        """Epoch-end aggregation of device parts (ends in client order); returns one payload per
        device, then the epoch summary (training loss, step records, payload sizes)."""
        session = self._session()
        new = session.aggregate({e["device"]: e["state"] for e in ends})
        summary = session.epoch_summary()
        summary["payload_bytes"] = {name: len(p) for name, p in new.items()}
        return [*(new[name] for name in session.devices), summary]

    def split_evaluate(self, message: bytes) -> dict:
        return self._session().evaluate(message)

    def split_finish(self) -> dict[str, DeviceUpdate]:
        """Close the session; every device's upload carries the one aggregated sub-model."""
        session, self._split = self._session(), None
        self._split_uploads = set(session.devices)  # one aggregated upload for all of them: screened once
        state = session.sub.state_dict()
        out = {}
        for name in session.devices:
            dev = self._split_devices[name]
            payload = pack_state(state, session.spec, {"version": self.version, "device": name, "mode": "split"})
            out[name] = DeviceUpdate(device=name, payload=payload, importance=dev["importance"],
                                     num_samples=int(dev["num_samples"]), classes=tuple(dev.get("classes", ())))
        return out

    def split_abort(self) -> None:
        self._split = None


__all__ = ["SplitCloudMixin"]
