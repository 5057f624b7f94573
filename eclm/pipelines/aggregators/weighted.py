"""Importance/sample weighted average (the paper's module-wise FedAvg)."""

from __future__ import annotations

from torch import Tensor

from eclm.modules.merge import weighted_sum
from eclm.pipelines.aggregators.base import Aggregator


class WeightedAverage(Aggregator):
    name = "weighted"

    def __call__(self, tensors: list[Tensor], weights: list[float]) -> Tensor:
        return weighted_sum(tensors, weights)
