"""Configuration of the adaptation trigger: a small tree of policies, validated at load time.

YAML example (adapt drifted devices, or everything every 500 steps, or on request)::

    trigger:
      kind: any
      children:
        - kind: drift
          params: {threshold: 0.3, cooldown_steps: 20}
        - kind: periodic
          params: {every_steps: 500}
        - kind: manual

Each leaf kind's ``params`` are checked against a parameter model of their own (wrong names,
types or bounds fail here, with the field named), so a bad campaign file fails before Ray starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TriggerKind = Literal["periodic", "drift", "resource", "manual", "any", "all"]
COMPOSITE_KINDS: tuple[str, ...] = ("any", "all")


class PeriodicParams(BaseModel):
    """Parameters of ``kind: periodic`` (exactly one period)."""

    model_config = ConfigDict(extra="forbid")

    every_steps: int | None = Field(None, ge=1, description="Fire every this many coordinator steps.")
    every_seconds: float | None = Field(
        None, gt=0.0, allow_inf_nan=False, description="Fire when this many seconds of obs.time have elapsed.")

    @model_validator(mode="after")
    def _exactly_one_period(self) -> PeriodicParams:
        if (self.every_steps is None) == (self.every_seconds is None):
            raise ValueError("periodic trigger needs exactly one of every_steps or every_seconds")
        return self


class DriftParams(BaseModel):
    """Parameters of ``kind: drift``."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        ..., allow_inf_nan=False, description="A device fires when its drift score is strictly above this.")
    devices: list[str] | None = Field(
        None, min_length=1, description="Devices to watch; omit to watch every device with a score.")
    cooldown_steps: int = Field(0, ge=0, description="Steps a device stays quiet after firing.")


class ResourceParams(BaseModel):
    """Parameters of ``kind: resource``."""

    model_config = ConfigDict(extra="forbid")

    relative_change: float = Field(
        0.2, gt=0.0, allow_inf_nan=False,
        description="Fire when a resource number moves by more than this fraction since last seen.")


class ManualParams(BaseModel):
    """Parameters of ``kind: manual`` (none)."""

    model_config = ConfigDict(extra="forbid")


PARAMS_BY_KIND: dict[str, type[BaseModel]] = {
    "periodic": PeriodicParams,
    "drift": DriftParams,
    "resource": ResourceParams,
    "manual": ManualParams,
}


class TriggerConfig(BaseModel):
    """One node of the trigger tree: a leaf policy with params, or a composite with children."""

    model_config = ConfigDict(extra="forbid")

    kind: TriggerKind = Field(
        ..., description="periodic | drift | resource | manual (leaves), any | all (composites of children).")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Leaf parameters; see PeriodicParams, DriftParams, ResourceParams.")
    children: list[TriggerConfig] = Field(
        default_factory=list, description="Child triggers of an 'any' / 'all' composite (at least one).")

    @model_validator(mode="after")
    def _shape_matches_kind(self) -> TriggerConfig:
        if self.kind in COMPOSITE_KINDS:
            if not self.children:
                raise ValueError(f"trigger kind {self.kind!r} needs at least one entry in children")
            if self.params:
                raise ValueError(f"trigger kind {self.kind!r} takes no params, got {sorted(self.params)}")
            return self
        if self.children:
            raise ValueError(f"trigger kind {self.kind!r} takes no children (only 'any' / 'all' do)")
        self.leaf_params()  # validate now so a typo fails at load time, not at campaign start
        return self

    def leaf_params(self) -> BaseModel:
        """The validated parameter model of a leaf trigger.

        Returns:
            A ``PeriodicParams`` / ``DriftParams`` / ``ResourceParams`` / ``ManualParams``.

        Raises:
            ValueError: If this is a composite, or the params do not fit the kind (the message names
                the offending ``params.<field>``).
        """
        if self.kind in COMPOSITE_KINDS:
            raise ValueError(f"trigger kind {self.kind!r} is a composite and has no leaf params")
        try:
            return PARAMS_BY_KIND[self.kind].model_validate(self.params)
        except ValidationError as err:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else f"params: {e['msg']}"
                for e in err.errors())
            raise ValueError(f"invalid params for trigger kind {self.kind!r}: {problems}") from None
