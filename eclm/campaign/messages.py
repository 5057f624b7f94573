"""Typed messages between the coordinator, the cloud and the devices.

Everything that crosses a service boundary is one of these frozen pydantic models: what a device
reports (:class:`DeviceSummary`), what the cloud ships (:class:`SubModelPackage`), what a device
returns (:class:`DeviceUpdate`), the merge outcome (:class:`MergeOutcome`) and what a cycle or a
split round produced. Weights stay safetensors bytes inside them (never pickled tensors or
objects), and the validators bound every value a device claims, so a message that exists is a
message whose numbers are finite and plausible. A device's *identity* is never taken from a
message: the coordinator tags each reply with the endpoint it called (:class:`AttributedUpdate`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eclm.modules.spec import SubModelSpec, TrainableSpec

#: How far an importance row may sum from 1 (rows are means of softmax outputs, so ~1 up to float error).
IMPORTANCE_ROW_TOLERANCE = 1e-3

DecisionName = Literal["accept", "partial", "reject"]


class Message(BaseModel):
    """Base of every message: frozen, no unknown fields, no NaN/inf unless a field allows ``None``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Resources(Message):
    """A device's resources right now; ``None`` means unconstrained / unknown."""

    memory_mb: float | None = Field(None, gt=0, description="memory available for training, MB")
    gflops: float | None = Field(None, gt=0, description="sustained compute, GFLOP/s")
    bandwidth_mbps: float | None = Field(None, gt=0, description="link bandwidth to the cloud, Mbit/s")
    params_fraction: float | None = Field(None, gt=0, le=1, description="cap on the sub-model's share of params")
    latency_s: float | None = Field(None, ge=0, description="one-way link latency, s")

    def as_dict(self) -> dict[str, float]:
        """The set resources as a plain mapping (what the budget computation takes)."""
        return {k: float(v) for k, v in self.model_dump().items() if v is not None}

    def dropped_since(self, before: Resources) -> list[str]:
        """Resources that were set before and are lower now (a resource drop)."""
        now, old = self.model_dump(), before.model_dump()
        return [k for k, v in now.items() if v is not None and old.get(k) is not None and v < old[k]]


class StreamPosition(Message):
    """Where a device's data stream is after :meth:`advance` (environment and step)."""

    device: str
    step: int = Field(ge=0)
    corruption: str | None = None
    severity: int | None = None
    classes: tuple[int, ...] = ()


class DriftReport(Message):
    """Drift of a device's incoming data since its last adaptation (see docs/architecture.md)."""

    device: str
    labelled: float = Field(ge=0)
    label_free: float = Field(ge=0)
    combined: float = Field(ge=0)
    accuracy_on_new: float | None = Field(None, ge=0, le=1)


#: Modules a device holds from an older cloud version than its package's: ``(layer, module, version)``.
Lagging = tuple[tuple[int, int, int], ...]
#: At most one entry per module of a model; far more than any backbone here has.
MAX_LAGGING = 4096

#: What a package carries and why (:attr:`SubModelPackage.delivery`): ``kept`` (nothing: the device
#: holds this version and spec), ``delta`` (the change since the version it holds), ``respec`` (another
#: spec of the model it holds: the change of the kept modules, the new ones whole), or the whole
#: sub-model because it is the device's ``first``, a ``refresh`` after a rejected upload (fresh
#: weights), its held version has ``expired`` (no longer kept), it holds an ``other_model``, its
#: spec changed and the method does not respec (``new_spec``), or the exchange sends ``weights``
#: every time.
Delivery = Literal["kept", "delta", "respec", "first", "refresh", "expired", "other_model", "new_spec", "weights"]


def _check_lagging(lagging: Lagging, version: int) -> Lagging:
    """Lagging modules: non-negative indices, a version older than ``version``, each module once."""
    if any(min(entry) < 0 or entry[2] >= version for entry in lagging):
        raise ValueError(f"lagging modules need non-negative indices and a version below {version}")
    if len({entry[:2] for entry in lagging}) != len(lagging):
        raise ValueError("a lagging module is named twice")
    return lagging


class HeldModel(Message):
    """The sub-model a device holds: its spec and the cloud version it was derived from.

    Attributes:
        spec: The held sub-model.
        version: The cloud version of the package that brought it.
        lagging: Modules whose weights the device still holds from an older version (the download
            skipped their small change, docs/method.md "Downloads that skip small changes").
    """

    spec: SubModelSpec
    version: int = Field(ge=0)
    lagging: Lagging = Field((), max_length=MAX_LAGGING)

    @model_validator(mode="after")
    def _lagging_older(self) -> HeldModel:
        _check_lagging(self.lagging, self.version)
        return self


def _check_importance(rows: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
    """Importance: per module layer a probability row (finite, in [0, 1], summing to ~1)."""
    if not rows:
        raise ValueError("importance must have one row per module layer, got none")
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"importance row {i} is empty")
        if any(not math.isfinite(v) or v < 0 or v > 1 for v in row):
            raise ValueError(f"importance row {i} must hold finite values in [0, 1]")
        if abs(sum(row) - 1.0) > IMPORTANCE_ROW_TOLERANCE * len(row):
            raise ValueError(f"importance row {i} sums to {sum(row):.6g}, not 1")
    return rows


class DeviceSummary(Message):
    """What the cloud needs to derive a device's sub-model; never raw data.

    Attributes:
        device: The device's name (checked against the endpoint that answered).
        importance: Per module layer, the mean selector probability of each module on local data.
        resources: Current resources.
        num_samples: Local training samples.
        classes: Classes in the device's data.
        held: The sub-model the device holds, if any.
        held_accuracy: Accuracy of the held model on the current and the previous environment
            before anything is delivered (``None`` without a model or data); forgetting is
            measured against it.
        held_previous_accuracy_own: The held model's accuracy on the previous environment with
            the argmax restricted to the device's own classes (``None`` as above).
    """

    device: str
    importance: tuple[tuple[float, ...], ...]
    resources: Resources
    num_samples: int = Field(ge=0)
    classes: tuple[int, ...]
    held: HeldModel | None = None
    held_accuracy: float | None = Field(None, ge=0, le=1)
    held_previous_accuracy: float | None = Field(None, ge=0, le=1)
    selector_digest: str | None = Field(None, description="sha256 of the selector the importance was computed with")
    held_previous_accuracy_own: float | None = Field(None, ge=0, le=1)

    @field_validator("importance")
    @classmethod
    def _importance_rows(cls, v: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
        return _check_importance(v)


class SubModelPackage(Message):
    """What the cloud ships to one device.

    Attributes:
        device: Recipient.
        spec: The sub-model the device must hold after installing.
        payload: Safetensors bytes (full sub-model, or a delta against ``base_version``); ``None``
            means the device keeps the weights it holds (same spec, same version).
        version: Cloud version the package reflects.
        budget: The resource limits the derivation respected (dimension -> limit).
        cost: The sub-model's cost (params, flops, activation_bytes, payload_bytes; with
            module-sparse adaptation also the modelled ``train_memory`` in bytes).
        solve_seconds: Time the derivation took.
        trainable: What the device trains this cycle (module-sparse adaptation, within ``spec``);
            ``None``: every parameter of the sub-model.
        lagging: Modules the device holds from an older version once it has installed this
            package (:attr:`HeldModel.lagging`; it reports them back with its next summary).
        delivery: What the payload carries and why (:data:`Delivery`), for the traffic accounts.
    """

    device: str
    spec: SubModelSpec
    payload: bytes | None = None
    version: int = Field(ge=0)
    budget: dict[str, float] = Field(default_factory=dict)
    cost: dict[str, float] = Field(default_factory=dict)
    solve_seconds: float = Field(0.0, ge=0)
    trainable: TrainableSpec | None = None
    lagging: Lagging = Field((), max_length=MAX_LAGGING)
    delivery: Delivery | None = Field(None, description="what the payload carries and why (Delivery); None: "
                                      "not stated by the sender")

    @model_validator(mode="after")
    def _delivery_matches_payload(self) -> SubModelPackage:
        if self.delivery is not None and (self.delivery == "kept") != (self.payload is None):
            raise ValueError(f"delivery {self.delivery!r} with {'no' if self.payload is None else 'a'} payload")
        return self

    @model_validator(mode="after")
    def _lagging_older(self) -> SubModelPackage:
        _check_lagging(self.lagging, self.version)
        return self

    @model_validator(mode="after")
    def _trainable_within_spec(self) -> SubModelPackage:
        if self.trainable is not None and not self.trainable.within(self.spec):
            raise ValueError("trainable names modules the sub-model does not hold")
        return self

    @property
    def nbytes(self) -> int:
        return len(self.payload or b"")


class InstallReport(Message):
    """What installing a package did on the device."""

    device: str
    params: int = Field(ge=0)
    modules: int = Field(ge=0)
    kept: bool = False


class SwapReport(Message):
    """A local swap to a smaller sub-model after a resource drop (no cloud round trip)."""

    device: str
    spec: SubModelSpec
    params_before: float = Field(ge=0)
    params_after: float = Field(ge=0)


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float if it is a finite number, else ``None`` (what :class:`DeviceMetrics`
    accepts for a measurement that failed, e.g. a loss after training diverged)."""
    return None if value is None or not math.isfinite(value) else float(value)


class DeviceMetrics(Message):
    """Per-device measurements of one cycle (accuracies in [0, 1] on the device's test data).

    The ``*_own`` accuracies take the argmax over the device's own classes only (a label-skewed
    device knows which classes it can see); the others over all classes.
    """

    mode: Literal["local", "split"] = "local"
    acc_before: float | None = Field(None, ge=0, le=1)
    acc_after: float | None = Field(None, ge=0, le=1)
    acc_before_own: float | None = Field(None, ge=0, le=1, description="acc_before, argmax over own classes")
    acc_after_own: float | None = Field(None, ge=0, le=1, description="acc_after, argmax over own classes")
    acc_held: float | None = Field(None, ge=0, le=1, description="held model before delivery")
    loss_before: float | None = None
    loss_after: float | None = None
    prev_acc_before: float | None = Field(None, ge=0, le=1)
    prev_acc_after: float | None = Field(None, ge=0, le=1)
    prev_acc_after_own: float | None = Field(None, ge=0, le=1, description="prev_acc_after, argmax over own classes")
    forgetting: float | None = Field(None, ge=-1, le=1)
    train_seconds: float | None = Field(None, ge=0)
    seconds_per_batch: float | None = Field(None, ge=0)
    batches: int | None = Field(None, ge=0)
    clipped_steps: int | None = Field(None, ge=0, description="training steps whose gradient norm was clipped "
                                      "(adaptation.max_grad_norm; None without clipping)")
    max_grad_norm_seen: float | None = Field(None, ge=0, description="largest gradient norm of a training step "
                                             "before clipping (None without clipping)")
    params: float | None = Field(None, ge=0)
    flops: float | None = Field(None, ge=0)
    train_memory_estimate: float | None = Field(None, ge=0, description="modelled training memory, bytes "
                                                 "(eclm.modules.trainable.TrainingMemory)")
    trainable: TrainableSpec | None = Field(None, description="what the device trained (None: every parameter)")
    trained_params: float | None = Field(None, ge=0, description="parameters the device trained")
    rss_delta: float | None = None
    environment: str | None = None
    severity: int | None = None
    drift: float | None = Field(None, ge=0)
    cut: int | None = None
    emulated_seconds: float | None = Field(None, ge=0)


class DeviceUpdate(Message):
    """What a device returns after adapting: its update and the facts the merge weighs it by.

    Attributes:
        device: The name the device claims (the coordinator compares it with the endpoint's).
        payload: Safetensors bytes: this cycle's weight change (``kind: delta``) or the weights,
            with the spec in the header.
        importance: Per module layer module importance after adapting (finite, rows sum ~1).
        num_samples: Samples the update was trained on (finite, positive).
        classes: Classes the device trained on (must be its own).
        metrics: What the cycle measured on the device.
    """

    device: str
    payload: bytes
    importance: tuple[tuple[float, ...], ...]
    num_samples: int = Field(gt=0)
    classes: tuple[int, ...]
    metrics: DeviceMetrics = Field(default_factory=DeviceMetrics)

    @field_validator("importance")
    @classmethod
    def _importance_rows(cls, v: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
        return _check_importance(v)


class AttributedUpdate(Message):
    """An update tagged with the endpoint it came from (identity from the channel) and the spec
    the cloud issued to that device this cycle."""

    channel: str = Field(description="name of the device endpoint that returned the update")
    issued: SubModelSpec
    enrolled_classes: tuple[int, ...] = Field(description="the classes the device reported when it enrolled")
    update: DeviceUpdate


class MergeOutcome(Message):
    """What the validated merge decided, with a reason for every excluded device."""

    decision: DecisionName
    reason: str
    accepted: tuple[str, ...] = ()
    rejected: dict[str, str] = Field(default_factory=dict)
    cloud_acc_before: float | None = None
    cloud_acc_after: float | None = None
    device_acc_before: dict[str, float] = Field(default_factory=dict)
    device_acc_after: dict[str, float] = Field(default_factory=dict)
    server_step: float | None = None
    version: int = Field(0, ge=0)
    screen: dict[str, dict] = Field(default_factory=dict, description="per device the robust screen's statistics")
    paired: dict | None = Field(None, description="the paired acceptance test of the accepted candidate")
    candidates: int = Field(0, ge=0, description="merged candidates validated (server steps, group testing)")
    details: dict[str, str] = Field(default_factory=dict, description="free-form facts of the merge or the "
                                    "strategy (e.g. 'repair': why the cloud's repair step was skipped)")
    cloud_seen_acc: float | None = Field(None, description="cloud accuracy under the environments seen so far "
                                                           "(after the merge; docs/method.md)")
    environments: tuple[str, ...] = Field((), description="environments seen so far, as corruption@severity")

    @property
    def changed(self) -> bool:
        """Whether the cloud model moved to a new version."""
        return self.decision in ("accept", "partial")

    @classmethod
    def nothing(cls, reason: str, version: int) -> MergeOutcome:
        return cls(decision="reject", reason=reason, version=version)


class CloudInfo(Message):
    """Architecture facts the coordinator and devices need."""

    model_id: str
    arch: dict
    layer_names: tuple[str, ...]
    layer_sizes: tuple[int, ...]
    allows_empty: tuple[bool, ...]
    costs: dict
    full_cost: dict[str, float]
    num_classes: int = Field(gt=0)
    version: int = Field(ge=0)
    proxy_train: int = Field(ge=0)
    proxy_val: int = Field(ge=0)


class EpochRecord(Message):
    """One epoch of the offline stage (cross-entropy ``ce`` plus the auxiliary loss ``aux``)."""

    stage: str
    epoch: int = Field(ge=0)
    loss: float
    ce: float
    aux: float
    train_acc: float = Field(ge=0, le=1)
    val_acc_dense: float = Field(ge=0, le=1)
    val_acc_routed: float = Field(ge=0, le=1)


class CloudSnapshot(Message):
    """Everything the cloud needs to come back as it was after an accepted round.

    Attributes:
        version: Current cloud version.
        weights: Safetensors bytes of the backbone (``backbone.*``) and selector (``selector.*``).
        kept_versions: Older versions still diffed against for deltas: version -> backbone bytes.
        best_val_acc: Best proxy accuracy of any accepted version (the merge tolerance floor).
    """

    version: int = Field(ge=0)
    weights: bytes
    kept_versions: dict[int, bytes] = Field(default_factory=dict)
    best_val_acc: float | None = None


__all__ = [
    "AttributedUpdate",
    "CloudInfo",
    "CloudSnapshot",
    "DeviceMetrics",
    "DeviceSummary",
    "DeviceUpdate",
    "DriftReport",
    "EpochRecord",
    "HeldModel",
    "InstallReport",
    "Lagging",
    "MergeOutcome",
    "Message",
    "Resources",
    "StreamPosition",
    "SubModelPackage",
    "finite_or_none",
    "SwapReport",
]
