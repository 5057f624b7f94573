"""Krum and multi-Krum: keep the contributions closest to their neighbours, drop the outliers.

Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017) scores each of ``n`` contributions by the sum of squared distances to
its ``n - f - 2`` nearest others (``f`` = tolerated Byzantine contributors) and keeps the lowest
score; multi-Krum keeps the ``m`` lowest and averages them (here with their merge weights,
renormalised). Flower ships both (``flwr.server.strategy.Krum``); eclm applies them per merge
unit (each module slice, shared tensor or class row, over the devices holding it), like the
median and the trimmed mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eclm.modules.merge import weighted_sum
from eclm.pipelines.aggregators.base import Aggregator


class Krum(Aggregator):
    """Krum (``keep=1``) or multi-Krum (``keep=m``, ``None`` = ``n - byzantine``).

    With one or two contributions there is nothing to compare a contribution with (two are
    equidistant), so they are combined by the weighted average; the guarantee of Krum needs
    ``n >= 2 f + 3``. Ties go to the earlier contribution.

    Args:
        byzantine: Number ``f`` of contributions that may be arbitrary.
        keep: How many of the best-scored contributions are averaged.
    """

    name = "krum"

    def __init__(self, byzantine: int = 1, keep: int | None = 1) -> None:
        if byzantine < 0 or (keep is not None and keep < 1):
            raise ValueError(f"byzantine must be >= 0 and keep >= 1, got {byzantine} and {keep}")
        self.byzantine = byzantine
        self.keep = keep
        self.name = "krum" if keep == 1 else "multi_krum"

    def __call__(self, tensors: list[Tensor], weights: list[float]) -> Tensor:
        if len(tensors) <= 2:
            return weighted_sum(tensors, _normalised(weights))
        chosen = self.select(tensors)
        return weighted_sum([tensors[i] for i in chosen], _normalised([weights[i] for i in chosen]))

    def select(self, tensors: list[Tensor]) -> list[int]:
        """Indices of the kept contributions, best score first."""
        n = len(tensors)
        flat = torch.stack([t.reshape(-1).double() for t in tensors])
        dist_sq = torch.cdist(flat, flat).pow(2)
        closest = max(1, n - self.byzantine - 2)
        # column 0 of each sorted row is the contribution itself (distance 0)
        scores = dist_sq.sort(dim=1).values[:, 1 : closest + 1].sum(dim=1)
        keep = min(n, self.keep if self.keep is not None else max(1, n - self.byzantine))
        return torch.argsort(scores, stable=True)[:keep].tolist()


def _normalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else [1.0 / len(weights)] * len(weights)
