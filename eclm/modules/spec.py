"""Value objects exchanged between cloud and devices: sub-model specs and device budgets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

RESOURCE_DIMS = ("params", "flops", "activation_bytes", "payload_bytes")


def _sorted_groups(v: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    for i, g in enumerate(v):
        if any(x < 0 for x in g) or len(set(g)) != len(g):
            raise ValueError(f"layer {i}: module indices must be unique and non-negative, got {list(g)}")
    return tuple(tuple(sorted(g)) for g in v)


class SubModelSpec(BaseModel):
    """Which module groups a sub-model keeps in each module layer.

    Attributes:
        model_id: Fingerprint of the modular cloud architecture the spec refers to.
        groups: Per module layer (forward order), the sorted module indices kept; an empty list
            selects the layer's residual module.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(description="fingerprint of the modular architecture")
    groups: tuple[tuple[int, ...], ...] = Field(description="kept module indices per layer")

    @field_validator("groups")
    @classmethod
    def _sorted_unique(cls, v: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
        return _sorted_groups(v)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> SubModelSpec:
        return cls.model_validate_json(text)

    def num_modules(self) -> int:
        """Total number of modules kept over all layers."""
        return sum(len(g) for g in self.groups)

    def contains(self, other: SubModelSpec) -> bool:
        """Whether every module of ``other`` is also in this spec."""
        return self.model_id == other.model_id and all(
            set(b) <= set(a) for a, b in zip(self.groups, other.groups, strict=True)
        )


class TrainableSpec(BaseModel):
    """What of its sub-model a device trains in one cycle (module-sparse adaptation).

    Everything else is frozen: it carries no gradient or optimizer state, backward stops at the
    earliest trainable layer, and the device uploads only what it trained (see docs/method.md).

    Attributes:
        groups: Per module layer, the trainable modules (a subset of the sub-model's groups).
        head_rows: Classifier rows (classes) trained; ``None`` trains every row.
        shared: Whether the tensors outside modules are trained too (stem, the parts a layer's
            modules share, undecomposed blocks); with every module and every row this is dense
            training.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: tuple[tuple[int, ...], ...] = Field(description="trainable module indices per layer")
    head_rows: tuple[int, ...] | None = Field(None, description="classifier rows trained (None: all)")
    shared: bool = Field(False, description="train the tensors outside modules too")

    @field_validator("groups")
    @classmethod
    def _sorted_unique(cls, v: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
        return _sorted_groups(v)

    @field_validator("head_rows")
    @classmethod
    def _rows(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (any(r < 0 for r in v) or len(set(v)) != len(v)):
            raise ValueError(f"head_rows must be unique and non-negative, got {list(v)}")
        return None if v is None else tuple(sorted(v))

    @classmethod
    def dense(cls, spec: SubModelSpec) -> TrainableSpec:
        """Train everything of ``spec`` (what a device did before module-sparse adaptation)."""
        return cls(groups=spec.groups, head_rows=None, shared=True)

    def is_dense(self, spec: SubModelSpec) -> bool:
        """Whether this trains every tensor of ``spec``."""
        return self.shared and self.head_rows is None and tuple(self.groups) == tuple(spec.groups)

    def within(self, spec: SubModelSpec) -> bool:
        """Whether every trainable module is one ``spec`` holds."""
        return len(self.groups) == len(spec.groups) and all(
            set(t) <= set(g) for t, g in zip(self.groups, spec.groups, strict=True))

    def restricted(self, spec: SubModelSpec) -> TrainableSpec:
        """The same plan without the modules ``spec`` does not hold (after a local swap)."""
        groups = tuple(tuple(g for g in t if g in set(h)) for t, h in zip(self.groups, spec.groups, strict=True))
        return self.model_copy(update={"groups": groups})

    def num_modules(self) -> int:
        return sum(len(g) for g in self.groups)


class DeviceProfile(BaseModel):
    """A device's resource budget for its sub-model; unset dimensions are unconstrained.

    Attributes:
        name: Device name, used in messages.
        max_params: Parameter count limit.
        max_flops: Forward FLOPs per sample limit (multiply-adds counted as 2).
        max_activation_bytes: Activation memory per sample limit (float32 bytes).
        max_payload_bytes: Bytes the sub-model's weights may take to ship.
        max_train_memory: Training-memory limit for module-sparse adaptation (bytes).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "device"
    max_params: float | None = Field(default=None, gt=0)
    max_flops: float | None = Field(default=None, gt=0)
    max_activation_bytes: float | None = Field(default=None, gt=0)
    max_payload_bytes: float | None = Field(default=None, gt=0)
    max_train_memory: float | None = Field(
        default=None, gt=0, description="bytes one adaptation may take (weights, gradients and optimizer state of "
        "trainable parameters, activations kept for backward); not a cost-table dimension: it limits the "
        "trainable subset (eclm.modules.trainable)")

    def limits(self) -> dict[str, float]:
        """``{dimension: limit}`` for the dimensions that are set."""
        out = {
            "params": self.max_params,
            "flops": self.max_flops,
            "activation_bytes": self.max_activation_bytes,
            "payload_bytes": self.max_payload_bytes,
        }
        return {k: float(v) for k, v in out.items() if v is not None}

    def scaled(self, factor: float, name: str | None = None) -> DeviceProfile:
        """The same profile with every set limit multiplied by ``factor``."""
        data = self.model_dump()
        for k, v in data.items():
            if k.startswith("max_") and v is not None:
                data[k] = v * factor
        data["name"] = name or self.name
        return DeviceProfile(**data)
