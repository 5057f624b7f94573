"""Aggregation strategies for the validated merge."""

from eclm.pipelines.aggregators.base import Aggregator
from eclm.pipelines.aggregators.krum import Krum
from eclm.pipelines.aggregators.median import CoordinateMedian
from eclm.pipelines.aggregators.trimmed_mean import TrimmedMean
from eclm.pipelines.aggregators.weighted import WeightedAverage

AGGREGATORS = ("weighted", "median", "trimmed_mean", "krum", "multi_krum")


def create_aggregator(name: str, trim_fraction: float = 0.2, byzantine: int = 1,
                      keep: int | None = None) -> Aggregator:
    """Aggregator by config name (``weighted`` | ``median`` | ``trimmed_mean`` | ``krum`` | ``multi_krum``).

    Args:
        name: The config name.
        trim_fraction: Share trimmed at each end (``trimmed_mean``).
        byzantine: Contributions Krum tolerates (``krum``, ``multi_krum``).
        keep: Contributions multi-Krum averages (``None``: all but ``byzantine``).

    Raises:
        ValueError: For an unknown name.
    """
    if name == "weighted":
        return WeightedAverage()
    if name == "median":
        return CoordinateMedian()
    if name == "trimmed_mean":
        return TrimmedMean(trim_fraction)
    if name == "krum":
        return Krum(byzantine, keep=1)
    if name == "multi_krum":
        return Krum(byzantine, keep=keep)
    raise ValueError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}")


__all__ = ["AGGREGATORS", "Aggregator", "CoordinateMedian", "Krum", "TrimmedMean", "WeightedAverage",
           "create_aggregator"]
