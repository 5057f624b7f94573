"""Aggregation strategies for the validated merge."""

from eclm.pipelines.aggregators.base import Aggregator
from eclm.pipelines.aggregators.median import CoordinateMedian
from eclm.pipelines.aggregators.trimmed_mean import TrimmedMean
from eclm.pipelines.aggregators.weighted import WeightedAverage


def create_aggregator(name: str, trim_fraction: float = 0.2) -> Aggregator:
    """Aggregator by config name (``weighted`` | ``median`` | ``trimmed_mean``)."""
    if name == "weighted":
        return WeightedAverage()
    if name == "median":
        return CoordinateMedian()
    if name == "trimmed_mean":
        return TrimmedMean(trim_fraction)
    raise ValueError(f"unknown aggregator {name!r}; choose weighted, median or trimmed_mean")


__all__ = ["Aggregator", "CoordinateMedian", "TrimmedMean", "WeightedAverage", "create_aggregator"]
