"""Baselines of the adaptation benchmark: NA, LA, FedAvg and HeteroFL next to eclm.

Each method is one strategy class (:class:`~benchmarks.baselines.base.AdaptationMethod`) running
on the platform's own Ray-free services; :func:`run_job` runs all of them for one label skew and
seed, :func:`setting_summary` aggregates seeds. Pure Python/torch: no Ray, no MLflow.
"""

from benchmarks.baselines.base import AdaptationMethod, DeviceSlot, occupy
from benchmarks.baselines.config import METHOD_NAMES, AdaptationBenchConfig
from benchmarks.baselines.eclm_method import EclmMethod
from benchmarks.baselines.experiment import METHODS, accuracies, run_job
from benchmarks.baselines.fedavg import FedAvg
from benchmarks.baselines.heterofl import HeteroFL
from benchmarks.baselines.local_adaptation import LocalAdaptation
from benchmarks.baselines.memory_probe import measure_adaptation_memory
from benchmarks.baselines.no_adaptation import NoAdaptation
from benchmarks.baselines.summary import mean_std, seed_summary, setting_summary
from benchmarks.baselines.width_prefix import prefix_spec, prefix_width, widest_prefix_within

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "AdaptationBenchConfig",
    "AdaptationMethod",
    "DeviceSlot",
    "EclmMethod",
    "FedAvg",
    "HeteroFL",
    "LocalAdaptation",
    "NoAdaptation",
    "accuracies",
    "mean_std",
    "measure_adaptation_memory",
    "occupy",
    "prefix_spec",
    "prefix_width",
    "run_job",
    "seed_summary",
    "setting_summary",
    "widest_prefix_within",
]
