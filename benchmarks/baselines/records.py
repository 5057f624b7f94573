"""What the adaptation benchmark keeps of each cycle: per-device records from the platform's results.

Every figure comes from what the platform's cycle itself reports: :class:`~eclm.campaign.results.CycleResult`
(device metrics, traffic, specs, merge outcome, phase durations) and the devices'
:class:`~eclm.campaign.messages.DeviceSummary` of the cycle (resources, classes and the held
model's accuracy on the previous environment *before* delivery, which forgetting is measured
from). :class:`CycleLog` is the recorder the coordinator reports them to.
"""

from __future__ import annotations

from collections.abc import Mapping

from eclm.campaign.messages import DeviceSummary
from eclm.campaign.recorder import NullRecorder
from eclm.campaign.results import CycleResult
from eclm.modules import CostTable
from eclm.pipelines.adaptation import training_memory_bytes


class CycleLog(NullRecorder):
    """A recorder that keeps every cycle's result and the summaries the devices sent."""

    def __init__(self) -> None:
        self.cycles: list[tuple[CycleResult, dict[str, DeviceSummary]]] = []

    def record_cycle(self, result, summaries, info, history) -> None:
        self.cycles.append((result, dict(summaries)))


def device_records(result: CycleResult, summaries: Mapping[str, DeviceSummary], costs: CostTable,
                   effective_batch: int, adapts: bool) -> list[dict]:
    """One record per device of the cycle.

    Args:
        result: The cycle's result.
        summaries: The summaries the devices sent this cycle.
        costs: The cloud's cost table (activation bytes of each device's sub-model).
        effective_batch: Steady-state training batch (fresh plus replayed samples) of the
            analytic training-memory estimate.
        adapts: Whether the method trains on the device (NA does not: no training memory).

    Returns:
        Records with ``round, device, tier, memory_mb, classes, environment, acc_before(_dev),
        acc_after(_dev), forgetting(_dev), bytes_down, bytes_up, delivery, seconds_per_batch, batches,
        train_seconds, params, trained_params, flops, activation_bytes, train_memory, trainable,
        groups``; ``_dev`` = argmax over the device's own classes.

    Raises:
        RuntimeError: If a device or the cloud failed in the cycle (a benchmark must not silently
            average over fewer devices).
    """
    if result.failures:
        raise RuntimeError(f"cycle {result.round} failed for {sorted(result.failures)}: {result.failures}")
    records = []
    for name in result.devices:
        m, s, spec = result.device_metrics[name], summaries[name], result.specs[name]
        activation = costs.total(spec)["activation_bytes"]
        records.append({
            "round": result.round, "device": name, "tier": s.resources.params_fraction, "classes": list(s.classes),
            "environment": m.environment,
            "acc_before": m.acc_before, "acc_before_dev": m.acc_before_own,
            "acc_after": m.acc_after, "acc_after_dev": m.acc_after_own,
            # Forgetting: what the device's model knew about the previous environment before this
            # cycle delivered anything, minus what it knows after this cycle (delivery + adaptation).
            "forgetting": _diff(s.held_previous_accuracy, m.prev_acc_after),
            "forgetting_dev": _diff(s.held_previous_accuracy_own, m.prev_acc_after_own),
            "bytes_down": result.bytes_down[name], "bytes_up": result.bytes_up[name],
            "delivery": result.deliveries.get(name),
            "seconds_per_batch": m.seconds_per_batch, "batches": m.batches,
            "params": m.params, "flops": m.flops, "activation_bytes": activation,
            # the platform's own estimate (eclm.modules.trainable.TrainingMemory, dense or module-sparse)
            "train_memory": (m.train_memory_estimate if m.train_memory_estimate is not None
                             else training_memory_bytes(m.params, activation, effective_batch)) if adapts else None,
            "trained_params": m.trained_params if adapts else None, "train_seconds": m.train_seconds,
            "memory_mb": s.resources.memory_mb,
            "trainable": m.trainable.model_dump(mode="json") if m.trainable is not None else None,
            "groups": [list(g) for g in spec.groups],
        })
    return records


def server_record(result: CycleResult, merges: bool) -> dict:
    """The cycle's server step: its duration (merge, new-version snapshot, cloud re-validation) and,
    for a merging method, the decision."""
    record = {"round": result.round, "seconds": result.durations.get("merge", 0.0)}
    if merges:
        o = result.merge
        record |= {"decision": o.decision, "accepted": len(o.accepted), "rejected": len(o.rejected),
                   "reason": o.reason}
    return record


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
