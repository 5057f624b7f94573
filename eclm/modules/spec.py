"""Value objects exchanged between cloud and devices: sub-model specs and device budgets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

RESOURCE_DIMS = ("params", "flops", "activation_bytes", "payload_bytes")


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
        for i, g in enumerate(v):
            if any(x < 0 for x in g) or len(set(g)) != len(g):
                raise ValueError(f"layer {i}: module indices must be unique and non-negative, got {list(g)}")
        return tuple(tuple(sorted(g)) for g in v)

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


class DeviceProfile(BaseModel):
    """A device's resource budget for its sub-model; unset dimensions are unconstrained.

    Attributes:
        name: Device name, used in messages.
        max_params: Parameter count limit.
        max_flops: Forward FLOPs per sample limit (multiply-adds counted as 2).
        max_activation_bytes: Activation memory per sample limit (float32 bytes).
        max_payload_bytes: Bytes the sub-model's weights may take to ship.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "device"
    max_params: float | None = Field(default=None, gt=0)
    max_flops: float | None = Field(default=None, gt=0)
    max_activation_bytes: float | None = Field(default=None, gt=0)
    max_payload_bytes: float | None = Field(default=None, gt=0)

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
