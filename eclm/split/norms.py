"""BatchNorm on one-sample batches.

GPSL hands a client (and EdgeSplit a server cut group) however many samples the global batch
assigns it, which can be one. A BatchNorm layer in training mode cannot estimate batch statistics
from a single value per channel (torch raises once the spatial size is 1x1, and the estimate is
degenerate before that). For such a step the norm layers run on their running statistics instead
(eval behaviour) and leave those statistics untouched; every other layer still trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def batch_safe_norms(module: nn.Module, batch_size: int) -> Iterator[None]:
    """Within the block, BatchNorm layers of ``module`` use running statistics if ``batch_size < 2``.

    Args:
        module: The part about to run a training forward pass.
        batch_size: Samples in the batch it will see.
    """
    if batch_size >= 2:
        yield
        return
    switched = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in switched:
        m.eval()
    try:
        yield
    finally:
        for m in switched:
            m.train()
