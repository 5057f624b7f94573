"""Coordinate-wise median: robust to a minority of arbitrary (poisoned) contributions."""

from __future__ import annotations

import torch
from torch import Tensor

from eclm.pipelines.aggregators.base import Aggregator


class CoordinateMedian(Aggregator):
    """Element-wise median over contributors; weights are ignored (each device counts once).

    With two contributors the median is their mean (``torch.quantile`` at 0.5 interpolates).
    """

    name = "median"

    def __call__(self, tensors: list[Tensor], weights: list[float]) -> Tensor:
        if len(tensors) == 1:
            return tensors[0].clone()
        stacked = torch.stack(tensors).float()
        return torch.quantile(stacked, 0.5, dim=0).to(tensors[0].dtype)
