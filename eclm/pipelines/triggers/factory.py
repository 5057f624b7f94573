"""Build a trigger (tree) from its configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eclm.pipelines.triggers.all_of import AllOf
from eclm.pipelines.triggers.any_of import AnyOf
from eclm.pipelines.triggers.base import Trigger
from eclm.pipelines.triggers.config import DriftParams, PeriodicParams, ResourceParams, TriggerConfig
from eclm.pipelines.triggers.drift import DriftTrigger
from eclm.pipelines.triggers.manual import ManualTrigger
from eclm.pipelines.triggers.periodic import PeriodicTrigger
from eclm.pipelines.triggers.resource_change import ResourceChangeTrigger


def trigger_from_config(cfg: TriggerConfig | Mapping[str, Any]) -> Trigger:
    """Instantiate the trigger described by ``cfg``, recursively for composites.

    Args:
        cfg: A :class:`TriggerConfig`, or a plain mapping (e.g. parsed YAML) validated into one.

    Returns:
        A fresh trigger with no state.

    Raises:
        TypeError: If ``cfg`` is neither a ``TriggerConfig`` nor a mapping.
        pydantic.ValidationError: If a mapping does not validate (it is a ``ValueError``; the
            message names the offending field).
    """
    if isinstance(cfg, Mapping):
        cfg = TriggerConfig.model_validate(dict(cfg))
    if not isinstance(cfg, TriggerConfig):
        raise TypeError(f"trigger_from_config expects a TriggerConfig or a mapping, got {type(cfg).__name__}")
    if cfg.kind == "any":
        return AnyOf(*(trigger_from_config(child) for child in cfg.children))
    if cfg.kind == "all":
        return AllOf(*(trigger_from_config(child) for child in cfg.children))
    params = cfg.leaf_params()
    if isinstance(params, PeriodicParams):
        return PeriodicTrigger(every_steps=params.every_steps, every_seconds=params.every_seconds)
    if isinstance(params, DriftParams):
        return DriftTrigger(params.threshold, devices=params.devices, cooldown_steps=params.cooldown_steps)
    if isinstance(params, ResourceParams):
        return ResourceChangeTrigger(relative_change=params.relative_change)
    return ManualTrigger()
