"""Pure (Ray-free) pipelines of the platform: adaptation, drift detection, validated merge,
resource profiling, trigger policies, and the cloud/edge services the actors wrap."""

from eclm.pipelines.adaptation import TrainStats, evaluate, finetune, recalibrate_norms
from eclm.pipelines.drift_detection import DriftDetector, DriftScore, importance_shift
from eclm.pipelines.integrity import check_update
from eclm.pipelines.profiler import budget_from_resources, measure_gflops, measure_resources
from eclm.pipelines.validated_merge import Evaluation, MergeReport, ValidatedMerge

__all__ = [
    "DriftDetector",
    "DriftScore",
    "Evaluation",
    "MergeReport",
    "TrainStats",
    "ValidatedMerge",
    "budget_from_resources",
    "check_update",
    "evaluate",
    "finetune",
    "importance_shift",
    "measure_gflops",
    "measure_resources",
    "recalibrate_norms",
]
