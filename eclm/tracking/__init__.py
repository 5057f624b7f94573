"""Experiment tracking: the campaign tracker (the only MLflow client in eclm), its JSONL journal,
journal replay, the eclm MLflow model (pyfunc + pytorch flavors, no pickle), plots.

Used from the cloud/driver side only. MLflow is imported lazily, when a tracker starts a run, so
importing this package (for example for :class:`TrackingConfig`) loads neither MLflow nor Ray.


Names are imported on first use (PEP 562), so importing one light submodule (for example
a config) does not pull in torch through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eclm._lazy import lazy_exports

if TYPE_CHECKING:
    from eclm.tracking._model_log import CHAMPION
    from eclm.tracking.config import TrackingConfig
    from eclm.tracking.flatten import MAX_PARAM_VALUE_LENGTH, config_params, flatten_config, param_value
    from eclm.tracking.journal import RECORD_KINDS, RunJournal, read_journal
    from eclm.tracking.model_flavor import load_model
    from eclm.tracking.plots import accuracy_over_rounds, module_usage_heatmap
    from eclm.tracking.plots import close as close_figure
    from eclm.tracking.replay import ReplaySummary, replay_journal
    from eclm.tracking.tracker import (
        RUN_STATUSES,
        CampaignTracker,
        default_artifact_location,
        default_tracking_uri,
    )

_EXPORTS: dict[str, tuple[str, str]] = {
    "TrackingConfig": ("eclm.tracking.config", "TrackingConfig"),
    "MAX_PARAM_VALUE_LENGTH": ("eclm.tracking.flatten", "MAX_PARAM_VALUE_LENGTH"),
    "config_params": ("eclm.tracking.flatten", "config_params"),
    "flatten_config": ("eclm.tracking.flatten", "flatten_config"),
    "param_value": ("eclm.tracking.flatten", "param_value"),
    "RECORD_KINDS": ("eclm.tracking.journal", "RECORD_KINDS"),
    "RunJournal": ("eclm.tracking.journal", "RunJournal"),
    "read_journal": ("eclm.tracking.journal", "read_journal"),
    "load_model": ("eclm.tracking.model_flavor", "load_model"),
    "ReplaySummary": ("eclm.tracking.replay", "ReplaySummary"),
    "replay_journal": ("eclm.tracking.replay", "replay_journal"),
    "CHAMPION": ("eclm.tracking._model_log", "CHAMPION"),
    "accuracy_over_rounds": ("eclm.tracking.plots", "accuracy_over_rounds"),
    "module_usage_heatmap": ("eclm.tracking.plots", "module_usage_heatmap"),
    "close_figure": ("eclm.tracking.plots", "close"),
    "RUN_STATUSES": ("eclm.tracking.tracker", "RUN_STATUSES"),
    "CampaignTracker": ("eclm.tracking.tracker", "CampaignTracker"),
    "default_artifact_location": ("eclm.tracking.tracker", "default_artifact_location"),
    "default_tracking_uri": ("eclm.tracking.tracker", "default_tracking_uri"),
}

__all__ = [
    "CHAMPION",
    "MAX_PARAM_VALUE_LENGTH",
    "RECORD_KINDS",
    "RUN_STATUSES",
    "CampaignTracker",
    "ReplaySummary",
    "RunJournal",
    "TrackingConfig",
    "accuracy_over_rounds",
    "close_figure",
    "config_params",
    "default_artifact_location",
    "default_tracking_uri",
    "flatten_config",
    "load_model",
    "module_usage_heatmap",
    "param_value",
    "read_journal",
    "replay_journal",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
