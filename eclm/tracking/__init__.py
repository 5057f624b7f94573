"""Experiment tracking: the campaign tracker (the only MLflow client in eclm), its JSONL journal, plots.

Used from the cloud/driver side only. MLflow is imported lazily, when a tracker starts a run, so
importing this package (for example for :class:`TrackingConfig`) loads neither MLflow nor Ray.
"""

from eclm.tracking.config import TrackingConfig
from eclm.tracking.flatten import MAX_PARAM_VALUE_LENGTH, config_params, flatten_config, param_value
from eclm.tracking.journal import RECORD_KINDS, RunJournal, read_journal
from eclm.tracking.plots import accuracy_over_rounds, module_usage_heatmap
from eclm.tracking.plots import close as close_figure
from eclm.tracking.tracker import (
    RUN_STATUSES,
    CampaignTracker,
    default_artifact_location,
    default_tracking_uri,
)

__all__ = [
    "MAX_PARAM_VALUE_LENGTH",
    "RECORD_KINDS",
    "RUN_STATUSES",
    "CampaignTracker",
    "RunJournal",
    "TrackingConfig",
    "accuracy_over_rounds",
    "close_figure",
    "config_params",
    "default_artifact_location",
    "default_tracking_uri",
    "flatten_config",
    "module_usage_heatmap",
    "param_value",
    "read_journal",
]
