"""Aggregation strategy: how contributions to one module slice or shared tensor are combined."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor


class Aggregator(ABC):
    """Combines the contributions ``tensors`` (same shape) with normalised ``weights``."""

    name: str = ""

    @abstractmethod
    def __call__(self, tensors: list[Tensor], weights: list[float]) -> Tensor:
        """Return the aggregate (a new tensor)."""
