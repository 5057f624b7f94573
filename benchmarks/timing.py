"""CPU inference timing: interleaved, warmed-up, median of repeated runs.

Models are timed round-robin (A, B, C, A, B, C, ...) with the order rotated each round, so that
a change of machine load during the measurement affects every model alike and throughput
*ratios* stay meaningful on a shared machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Throughput:
    """Inference speed of one model on one batch.

    Attributes:
        images_per_s: Batch size divided by the median seconds per batch.
        median_s: Median seconds per forward pass of the batch.
        q25_s: First quartile of the seconds per batch.
        q75_s: Third quartile of the seconds per batch.
        samples: Number of timed samples behind the median.
        passes_per_sample: Forward passes averaged inside each timed sample.
    """

    images_per_s: float
    median_s: float
    q25_s: float
    q75_s: float
    samples: int
    passes_per_sample: int


@torch.no_grad()
def interleaved_throughput(
    models: Mapping[str, nn.Module],
    batch: Tensor,
    *,
    repeats: int = 7,
    warmup: int = 2,
    min_sample_seconds: float = 0.05,
) -> dict[str, Throughput]:
    """Measure images/s of each model on ``batch`` (eval mode, no autograd).

    Args:
        models: Models by name; each takes ``batch`` and is put in eval mode.
        batch: ``(B, C, H, W)`` input.
        repeats: Timed samples per model (>= 1); the median is reported.
        warmup: Untimed forward passes per model first (allocations, kernel selection).
        min_sample_seconds: Each timed sample averages enough passes to last at least this long,
            so very fast models are not dominated by timer resolution and scheduling noise.

    Returns:
        :class:`Throughput` per model name.

    Raises:
        ValueError: If ``models`` is empty or ``repeats < 1``.
    """
    if not models:
        raise ValueError("models must not be empty")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(models)
    passes: dict[str, int] = {}
    for name in names:
        model = models[name].eval()
        for _ in range(warmup):
            model(batch)
        t0 = time.perf_counter()
        model(batch)
        single = max(time.perf_counter() - t0, 1e-6)
        passes[name] = max(1, math.ceil(min_sample_seconds / single))
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            model, n = models[name], passes[name]
            t0 = time.perf_counter()
            for _ in range(n):
                model(batch)
            seconds[name].append((time.perf_counter() - t0) / n)
    out = {}
    for name, values in seconds.items():
        med = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [med, med, med]
        out[name] = Throughput(len(batch) / med, med, q[0], q[2], len(values), passes[name])
    return out
