"""Trigger policies: decide, step by step, when to run an adaptation cycle and for which devices.

Pure Python (no Ray, no clock): the coordinator builds an :class:`Observation` each step, asks
its :class:`Trigger` to :meth:`~Trigger.decide`, and carries out the returned :class:`Decision`.
"""

from eclm.pipelines.triggers.all_of import AllOf
from eclm.pipelines.triggers.any_of import AnyOf
from eclm.pipelines.triggers.base import Trigger
from eclm.pipelines.triggers.config import (
    DriftParams,
    ManualParams,
    PeriodicParams,
    ResourceParams,
    TriggerConfig,
)
from eclm.pipelines.triggers.decision import Decision, DecisionKind
from eclm.pipelines.triggers.drift import DriftTrigger
from eclm.pipelines.triggers.factory import trigger_from_config
from eclm.pipelines.triggers.manual import ManualTrigger
from eclm.pipelines.triggers.observation import ALL_DEVICES, Observation
from eclm.pipelines.triggers.periodic import PeriodicTrigger
from eclm.pipelines.triggers.resource_change import ResourceChangeTrigger, relative_change

__all__ = [
    "ALL_DEVICES",
    "AllOf",
    "AnyOf",
    "Decision",
    "DecisionKind",
    "DriftParams",
    "DriftTrigger",
    "ManualParams",
    "ManualTrigger",
    "Observation",
    "PeriodicParams",
    "PeriodicTrigger",
    "ResourceChangeTrigger",
    "ResourceParams",
    "Trigger",
    "TriggerConfig",
    "relative_change",
    "trigger_from_config",
]
