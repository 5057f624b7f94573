"""The recorder that writes a campaign to MLflow (through :class:`~eclm.tracking.CampaignTracker`).

Per round (step = round): cloud validation accuracy and version, merge decision counts, traffic,
per-device accuracy before/after, forgetting, drift and sub-model size, phase durations; the
merge report as JSON; the accuracy-over-rounds plot and the module-usage heatmap; and every new
cloud version as a registered model version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eclm.campaign.messages import CloudInfo, CloudSnapshot, DeviceSummary, EpochRecord
from eclm.campaign.results import CycleResult
from eclm.campaign.store import RoundRecord
from eclm.config import PlatformConfig
from eclm.modules import SubModelSpec, pack_state, unpack_state

_DECISION_CODE = {"accept": 2, "partial": 1, "reject": 0}
_DEVICE_KEYS = ("acc_before", "acc_after", "forgetting", "drift", "params", "flops", "seconds_per_batch",
                "train_memory_estimate", "loss_after", "clipped_steps", "max_grad_norm_seen")


class TrackingRecorder:
    """Records into a started :class:`~eclm.tracking.CampaignTracker`.

    Args:
        tracker: The campaign's tracker (its run is open).
    """

    def __init__(self, tracker, config: PlatformConfig) -> None:
        self.tracker, self.cfg = tracker, config
        self._events = 0

    def record_pretrain(self, history: Sequence[EpochRecord], val_acc: float, seconds: float) -> None:
        """Offline epochs on their own step axis (``offline/*``, step = epoch over both stages)."""
        for i, h in enumerate(history):
            values = {k: v for k, v in h.model_dump().items() if isinstance(v, int | float) and k != "epoch"}
            self.tracker.log_epoch(i, values)
        self.tracker.log_round(0, {"cloud/val_acc": val_acc, "time/pretrain": seconds})

    def record_version(self, version: int, snapshot: CloudSnapshot, info: CloudInfo, val_acc: float | None,
                       step: int) -> None:
        """Register the version as an MLflow model (pyfunc and pytorch flavors) and move ``champion``."""
        b = self.cfg.backbone
        architecture = {"arch": info.arch, "modules_per_layer": b.modules_per_layer,
                        "input_size": list(self.cfg.input_size), "selector_width": b.selector_width,
                        "selector_dim": b.selector_dim}
        metrics = {"cloud/val_acc": val_acc} if val_acc is not None else {}
        self.tracker.log_model_version(_backbone_payload(snapshot, info), architecture, metrics, f"v{version:04d}",
                                       step=step, tags={"eclm.cloud_version": version, "eclm.model_id": info.model_id})

    def record_idle(self, round_index: int, drift: Mapping[str, float]) -> None:
        self.tracker.log_round(round_index, {f"drift/{n}": s for n, s in drift.items()})

    def record_event(self, kind: str, round_index: int, data: Mapping[str, Any]) -> None:
        """Swaps go to ``swaps/step_<step>_<device>.json`` (and ``device/<d>/params_after_swap``);
        other events (restarts, a recreated cloud, failed observations) to ``events/<n>_<kind>.json``."""
        if kind == "swap":
            self.tracker.log_json(f"swaps/step_{data['step']:04d}_{data['device']}.json", dict(data))
            if data.get("params_after") is not None:
                self.tracker.log_round(round_index, {f"device/{data['device']}/params_after_swap": data["params_after"]})
            return
        self._events += 1
        self.tracker.log_json(f"events/{self._events:04d}_{kind}.json", dict(data, round=round_index))

    def record_cycle(self, result: CycleResult, summaries: Mapping[str, DeviceSummary], info: CloudInfo,
                     history: Sequence[RoundRecord]) -> None:
        per_device = len(self.cfg.devices) <= self.cfg.tracking.per_device_metrics_max
        self.tracker.log_round(result.round, _cycle_metrics(result, per_device))
        if not per_device:  # many devices: one table per round instead of thousands of metric series
            self.tracker.log_json(f"rounds/round_{result.round:03d}/devices.table.json", device_table(result))
        report = dict(result.merge.model_dump(mode="json"), round=result.round, trigger_reason=result.reason,
                      failures=result.failures, specs={n: s.model_dump(mode="json") for n, s in result.specs.items()})
        self.tracker.log_json(f"rounds/round_{result.round:03d}/merge_report.json", report)
        if result.split is not None:
            self.tracker.log_round(result.round, result.split.round_metrics)
            self.tracker.log_json(f"rounds/round_{result.round:03d}/split_report.json", result.split.report)
        # drawn from metrics the journal holds already: on the publisher thread, off the campaign's path
        history = list(history)
        self.tracker.defer(lambda: self._plots(result.round, summaries, info, history))

    def _plots(self, round_index: int, summaries: Mapping[str, DeviceSummary], info: CloudInfo,
               history: Sequence[RoundRecord]) -> None:
        from eclm.tracking.plots import accuracy_over_rounds, module_usage_heatmap

        devices = sorted({n for h in history for n in h.acc_after})
        series = {n: [(h.round, h.acc_before.get(n), h.acc_after[n]) for h in history if n in h.acc_after]
                  for n in devices}
        cloud = [(h.round, h.cloud_val_acc) for h in history]
        self.tracker.log_figure(accuracy_over_rounds(series, cloud_accuracy=cloud),
                                f"rounds/round_{round_index:03d}/accuracy.png")
        usage = _mean_usage([s.importance for s in summaries.values()])
        if usage:
            self.tracker.log_figure(module_usage_heatmap(usage, list(info.layer_names)),
                                    f"rounds/round_{round_index:03d}/module_usage.png")


def _cycle_metrics(result: CycleResult, per_device: bool) -> dict[str, float]:
    merge = result.merge
    m: dict[str, float] = {
        "cloud/version": merge.version,
        "merge/decision": _DECISION_CODE[merge.decision],
        "merge/accepted_devices": len(merge.accepted),
        "merge/rejected_devices": len(merge.rejected),
        "traffic/bytes_up": sum(result.bytes_up.values()),
        "traffic/bytes_down": sum(result.bytes_down.values()),
        **{f"traffic/deliveries/{k}": v for k, v in Counter(result.deliveries.values()).items()},
        "devices/failed": len(result.failures),
        "devices/served": len(result.devices),
        **{f"time/{k}": v for k, v in result.durations.items()},
    }
    if result.cloud_val_acc is not None:
        m["cloud/val_acc"] = result.cloud_val_acc
    for key in ("acc_before", "acc_after", "forgetting"):
        if result.mean(key) is not None:
            m[f"devices/mean_{key}"] = result.mean(key)
    if not per_device:
        return m | _aggregates(result)
    for n, dm in result.device_metrics.items():
        m |= {f"device/{n}/{k}": getattr(dm, k) for k in _DEVICE_KEYS if getattr(dm, k) is not None}
    for n in result.devices:
        m[f"device/{n}/bytes_up"] = result.bytes_up.get(n, 0)
        m[f"device/{n}/bytes_down"] = result.bytes_down.get(n, 0)
    return m


def _aggregates(result: CycleResult) -> dict[str, float]:
    """Quantiles of the per-device numbers (``devices/<key>/p10`` ... ``/p90``, ``/min``)."""
    out: dict[str, float] = {}
    columns = {k: [getattr(m, k) for m in result.device_metrics.values() if getattr(m, k) is not None]
               for k in ("acc_before", "acc_after", "forgetting", "train_seconds")}
    columns["bytes_up"] = list(result.bytes_up.values())
    columns["bytes_down"] = list(result.bytes_down.values())
    for key, values in columns.items():
        if values:
            q = np.quantile(np.asarray(values, dtype=float), [0.1, 0.5, 0.9])
            out |= {f"devices/{key}/p10": q[0], f"devices/{key}/p50": q[1], f"devices/{key}/p90": q[2],
                    f"devices/{key}/min": float(min(values)), f"devices/{key}/max": float(max(values))}
    return out


def device_table(result: CycleResult) -> dict:
    """Per-device detail of one round as a table (``{"columns": [...], "data": [[...], ...]}``, the
    layout MLflow's table artifacts use), worst ``acc_after`` first."""
    columns = ["device", "acc_before", "acc_after", "forgetting", "bytes_up", "bytes_down", "delivery", "params",
               "failure"]
    rows = []
    for n in result.devices:
        dm = result.device_metrics.get(n)
        rows.append([n, dm.acc_before if dm else None, dm.acc_after if dm else None, dm.forgetting if dm else None,
                     result.bytes_up.get(n, 0), result.bytes_down.get(n, 0), result.deliveries.get(n),
                     dm.params if dm else None, result.failures.get(n)])
    rows.sort(key=lambda r: (r[2] is not None, r[2] if r[2] is not None else 0.0))
    return {"columns": columns, "data": rows}


def _backbone_payload(snapshot: CloudSnapshot, info: CloudInfo) -> bytes:
    """The checkpoint's backbone as a full sub-model payload (what the MLflow model stores)."""
    state, _, _ = unpack_state(snapshot.weights)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    spec = SubModelSpec(model_id=info.model_id, groups=[tuple(range(n)) for n in info.layer_sizes])
    return pack_state(backbone, spec, {"version": snapshot.version})


def _mean_usage(summaries: list) -> list[list[float]]:
    if not summaries:
        return []
    return [[sum(s[l][i] for s in summaries) / len(summaries) for i in range(len(summaries[0][l]))]
            for l in range(len(summaries[0]))]


__all__ = ["TrackingRecorder"]
