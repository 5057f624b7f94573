"""Evaluation of a composed split model ``server_part(client_part(x))``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from eclm.split.codecs.base import SmashedCodec

__all__ = ["EvalResult", "evaluate"]


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy and accuracy over an evaluation set of ``samples`` samples."""

    loss: float
    accuracy: float
    samples: int


@torch.no_grad()
def evaluate(
    client_part: nn.Module,
    server_part: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    codec: SmashedCodec | None = None,
    batch_size: int = 256,
) -> EvalResult:
    """Cross-entropy and accuracy of the composed model ``server_part(client_part(x))``.

    Args:
        client_part: client side.
        server_part: server side.
        x: inputs ``(n, ...)``.
        y: int64 labels ``(n,)``.
        codec: if given, activations pass through it (inference with compression).
        batch_size: evaluation batch size.

    Returns:
        :class:`EvalResult`; modules are put back in their previous train/eval mode.

    Raises:
        ValueError: if ``x`` and ``y`` lengths differ, are empty, or ``batch_size < 1``.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must be non-empty with equal lengths, got {x.shape[0]} and {y.shape[0]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    modes = (client_part.training, server_part.training)
    client_part.eval()
    server_part.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        smashed = client_part(x[start : start + batch_size])
        if codec is not None:
            smashed = codec.decode(codec.encode(smashed)).to(smashed.device)
        logits = server_part(smashed)
        labels = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    client_part.train(modes[0])
    server_part.train(modes[1])
    return EvalResult(loss=loss_sum / x.shape[0], accuracy=correct / x.shape[0], samples=int(x.shape[0]))
