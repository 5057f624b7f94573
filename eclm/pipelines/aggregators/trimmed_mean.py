"""Coordinate-wise trimmed mean: drop the largest and smallest values per coordinate."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eclm.pipelines.aggregators.base import Aggregator


class TrimmedMean(Aggregator):
    """Mean after removing ``floor(trim * K)`` contributions at each end, per coordinate.

    Args:
        trim: Fraction trimmed at each end, in ``[0, 0.5)``.
    """

    name = "trimmed_mean"

    def __init__(self, trim: float = 0.2) -> None:
        if not 0 <= trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {trim}")
        self.trim = trim

    def __call__(self, tensors: list[Tensor], weights: list[float]) -> Tensor:
        k = len(tensors)
        cut = math.floor(self.trim * k)
        if k == 1:
            return tensors[0].clone()
        values, _ = torch.sort(torch.stack(tensors), dim=0)
        return values[cut : k - cut].mean(dim=0)
