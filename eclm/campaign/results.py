"""What a cycle and a split round produce (also what the recorder logs to MLflow)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from eclm.campaign.messages import Delivery, DeviceMetrics, DeviceUpdate, MergeOutcome, SubModelPackage
from eclm.modules.spec import SubModelSpec


class SplitRoundResult(BaseModel):
    """What a split round gives the cycle.

    Attributes:
        packages: Per device the device part it downloaded (spec of the whole split sub-model).
        uploads: Per device its upload for the validated merge (the one aggregated sub-model).
        metrics: Per device its cycle metrics (mode ``split``).
        bytes_up: Per device bytes sent (activations at the codec's exact size, labels, device-part
            states, evaluation activations).
        bytes_down: Per device bytes received besides the first device part (gradients, states).
        round_metrics: Flat ``split/...`` metrics for MLflow.
        report: The round's JSON report (plan, stages, per-epoch loss and times).
        failures: Per device why it did not finish.
        lost: Devices whose endpoint died or timed out (to be restarted).
    """

    model_config = ConfigDict(extra="forbid")

    packages: dict[str, SubModelPackage] = Field(default_factory=dict)
    uploads: dict[str, DeviceUpdate] = Field(default_factory=dict)
    metrics: dict[str, DeviceMetrics] = Field(default_factory=dict)
    bytes_up: dict[str, int] = Field(default_factory=dict)
    bytes_down: dict[str, int] = Field(default_factory=dict)
    round_metrics: dict[str, float] = Field(default_factory=dict)
    report: dict = Field(default_factory=dict)
    failures: dict[str, str] = Field(default_factory=dict)
    lost: set[str] = Field(default_factory=set)


class CycleResult(BaseModel):
    """Everything one adaptation cycle produced.

    Attributes:
        round: The cycle's number (1-based).
        step: The data step it ran at.
        devices: Devices asked to take part.
        reason: Why it ran (the trigger's reason).
        device_metrics: Per device that adapted, what it measured.
        failures: Per device (or ``"cloud"``) why it did not take part to the end.
        merge: The merge decision.
        cloud_val_acc: Cloud proxy-validation accuracy after the merge.
        bytes_up: Per device bytes uploaded.
        bytes_down: Per device bytes downloaded (selector, package).
        deliveries: Per device what its package carried and why
            (:data:`~eclm.campaign.messages.Delivery`; devices whose strategy did not say are absent).
        durations: Seconds per phase.
        specs: The spec each adapting device held.
        split: The split round's result, if any device trained split.
    """

    model_config = ConfigDict(extra="forbid")

    round: int
    step: int = 0
    devices: list[str]
    reason: str = "manual"
    device_metrics: dict[str, DeviceMetrics] = Field(default_factory=dict)
    failures: dict[str, str] = Field(default_factory=dict)
    merge: MergeOutcome = Field(default_factory=lambda: MergeOutcome.nothing("no merge ran", 0))
    cloud_val_acc: float | None = None
    bytes_up: dict[str, int] = Field(default_factory=dict)
    bytes_down: dict[str, int] = Field(default_factory=dict)
    deliveries: dict[str, Delivery] = Field(default_factory=dict)
    durations: dict[str, float] = Field(default_factory=dict)
    specs: dict[str, SubModelSpec] = Field(default_factory=dict)
    split: SplitRoundResult | None = None

    def mean(self, key: str) -> float | None:
        """Mean of one :class:`DeviceMetrics` field over the devices that reported it."""
        vals = [getattr(m, key) for m in self.device_metrics.values() if getattr(m, key) is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def cloud_failed(self) -> bool:
        """Whether the cloud could not be reached even after recreating it."""
        return "cloud" in self.failures


__all__ = ["CycleResult", "SplitRoundResult"]
