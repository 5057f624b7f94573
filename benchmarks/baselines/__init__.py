"""Baselines of the adaptation benchmark: NA, LA, FedAvg and HeteroFL next to eclm.

Every method runs the platform's own cycle (:class:`~eclm.campaign.coordinator.CycleCoordinator`
over in-process services) with its server strategy and cloud service
(:mod:`benchmarks.baselines.methods`); :func:`run_job` runs all of them for one label skew and
seed, :func:`setting_summary` aggregates seeds. Pure Python/torch: no Ray, no MLflow.
"""

from benchmarks.baselines.config import METHOD_NAMES, AdaptationBenchConfig
from benchmarks.baselines.experiment import run_job, run_method
from benchmarks.baselines.fedavg import FedAvgCloud, configured_resources
from benchmarks.baselines.heterofl import HeteroFLCloud
from benchmarks.baselines.local_adaptation import DeriveOnce, LocalAdaptation
from benchmarks.baselines.memory_probe import measure_adaptation_memory
from benchmarks.baselines.methods import METHODS, BenchMethod
from benchmarks.baselines.no_adaptation import NoAdaptation
from benchmarks.baselines.records import CycleLog, device_records, server_record
from benchmarks.baselines.summary import mean_std, seed_summary, setting_summary
from benchmarks.baselines.width_prefix import prefix_spec, prefix_width, widest_prefix_within

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "AdaptationBenchConfig",
    "BenchMethod",
    "CycleLog",
    "DeriveOnce",
    "FedAvgCloud",
    "HeteroFLCloud",
    "LocalAdaptation",
    "NoAdaptation",
    "configured_resources",
    "device_records",
    "mean_std",
    "measure_adaptation_memory",
    "prefix_spec",
    "prefix_width",
    "run_job",
    "run_method",
    "seed_summary",
    "server_record",
    "setting_summary",
    "widest_prefix_within",
]
