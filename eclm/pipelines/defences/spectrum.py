"""How much an update looks like random noise: the stable rank of its changes against noise's.

A change learned by gradient descent on a device's data is a sum of a few outer products per
step (an output-gradient times an input activation, over a few hundred samples and steps that
share most of their directions), so each weight matrix's change has most of its energy in a few
singular directions. Random noise of the same shape spreads its energy over all of them. The
*stable rank* ``||A||_F^2 / ||A||_2^2`` measures that spread; divided by the mean stable rank of
i.i.d. Gaussian matrices of the same shape it is about 1 for noise and well below 1 for a change
learned from data (measured in docs/security.md, "Noise-like updates").

What this catches: a faulty device that sends garbage of a normal size (a broken sensor stream
trained on nothing, a corrupted payload that still decodes, an attacker that sends random noise).
What it does not: a crafted change of low rank (any rank-1 direction passes), which is what the
other checks of :class:`~eclm.pipelines.defences.screen.RobustScreen` are for.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from functools import lru_cache

import torch
from torch import Tensor

NOISE_DRAWS = 32  # Gaussian matrices averaged for the reference of one shape


def stable_rank(matrix: Tensor) -> float | None:
    """``||A||_F^2 / sigma_max(A)^2`` of a 2-D tensor (``None`` when it is all zeros).

    Computed from the Gram matrix of the smaller side, which is exact and cheap for the narrow
    matrices of a module (a few rows against hundreds of columns).
    """
    a = matrix.detach().to(torch.float64)
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    top = float(torch.linalg.eigvalsh(gram)[-1])
    return float(gram.trace()) / top if top > 0 else None


@lru_cache(maxsize=256)
def noise_stable_rank(rows: int, cols: int) -> float:
    """The mean stable rank of i.i.d. Gaussian ``rows x cols`` matrices (a fixed-seed estimate over
    :data:`NOISE_DRAWS` draws, so the same in every process)."""
    generator = torch.Generator().manual_seed(rows * 100_003 + cols)
    draws = [stable_rank(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
             for _ in range(NOISE_DRAWS)]
    return sum(d for d in draws if d is not None) / NOISE_DRAWS


def relative_stable_rank(matrix: Tensor) -> float | None:
    """The stable rank of ``matrix`` over that of Gaussian noise of its shape (about 1: noise-like).

    ``None`` for what carries no rank information: fewer than 2 rows or columns, or all zeros.
    A tensor of more than two dimensions is read as ``(shape[0], rest)``.
    """
    if matrix.dim() < 2:
        return None
    a = matrix.reshape(matrix.shape[0], -1)
    if min(a.shape) < 2:
        return None
    own = stable_rank(a)
    return None if own is None else own / noise_stable_rank(*a.shape)


def noise_likeness(matrices: Iterable[Tensor]) -> float | None:
    """The median over ``matrices`` (one update's changes per merge unit) of their relative stable
    rank; ``None`` when none of them carries rank information."""
    values = [v for v in (relative_stable_rank(m) for m in matrices) if v is not None]
    return statistics.median(values) if values else None


__all__ = ["noise_likeness", "noise_stable_rank", "relative_stable_rank", "stable_rank"]
