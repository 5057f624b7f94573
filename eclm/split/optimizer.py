"""SGD settings shared by the server and the device parts of a split round."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["OptimizerSettings"]


@dataclass(frozen=True)
class OptimizerSettings:
    """SGD settings shared by the server and client optimisers.

    Raises:
        ValueError: If ``lr`` is not positive, ``momentum`` is outside ``[0, 1)`` or
            ``weight_decay`` is negative.
    """

    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"OptimizerSettings.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"OptimizerSettings.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"OptimizerSettings.weight_decay must be >= 0, got {self.weight_decay}")

    def build(self, params: Sequence[nn.Parameter]) -> torch.optim.SGD:
        """An SGD optimiser over ``params``."""
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
