"""Pure (Ray-free) pipelines of the platform: adaptation, drift detection, validated merge,
resource profiling, trigger policies, and the cloud/edge services the actors wrap.

Submodules are imported on first use (``eclm.pipelines.X``), so importing a light subpackage
such as ``eclm.pipelines.triggers`` does not pull in torch.
"""

from eclm._lazy import lazy_exports

_EXPORTS = {
    "TrainStats": "adaptation", "evaluate": "adaptation", "finetune": "adaptation",
    "recalibrate_norms": "adaptation",
    "DriftDetector": "drift_detection", "DriftScore": "drift_detection", "importance_shift": "drift_detection",
    "check_update": "integrity",
    "budget_from_resources": "profiler", "measure_gflops": "profiler", "measure_resources": "profiler",
    "Evaluation": "validated_merge", "MergeReport": "validated_merge", "ValidatedMerge": "validated_merge",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(
    __name__, {name: (f"eclm.pipelines.{module}", name) for name, module in _EXPORTS.items()}, __all__
)
