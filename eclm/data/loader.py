"""Mini-batches over in-memory tensors, without ``DataLoader`` worker processes.

Device data is small (50-150 samples) and already in memory, and workers would fork inside Ray
actors; a plain generator over index permutations is all that is needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    *,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` pairs covering ``x`` and ``y`` once.

    Args:
        x: ``(N, ...)`` inputs.
        y: ``(N, ...)`` targets.
        batch_size: Rows per batch (>= 1); the last batch may be smaller unless ``drop_last``.
        shuffle: Visit rows in a random order drawn from ``generator``.
        generator: Source of the shuffle order (``None``: torch's global generator).
        drop_last: Skip a final batch smaller than ``batch_size``.

    Yields:
        ``(x[rows], y[rows])`` with ``len(rows) <= batch_size``.

    Raises:
        ValueError: If ``batch_size`` < 1 or ``x`` and ``y`` differ in length.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    count = x.shape[0]
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        rows = order[start : start + batch_size]
        yield x[rows], y[rows]


def num_batches(count: int, batch_size: int, *, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``count`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return count // batch_size if drop_last else -(-count // batch_size)
