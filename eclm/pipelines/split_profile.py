"""Timing a chain's stages: the fixed and the per-sample cost of every block on this host.

FLOPs say how much arithmetic a block does, not how long it takes: at small batches and on small
tensors a fixed cost per call (kernel launches, Python and autograd bookkeeping) dominates, so a
server that runs one pass per cut group, or a device that runs ten small stages, pays more than its
FLOPs say. :func:`time_block_costs` runs a training pass (forward and backward) of every stage, on
copies so the model is untouched, at two batch sizes, keeps the fastest of a few repeats (other work
on the host only ever adds time), and fits ``seconds = call + batch x per_sample`` per stage. Both
are expressed in FLOP-equivalents at ``reference_speed``: a planner told that speed for this host
predicts the measured seconds, and for a device of speed ``f`` the seconds x ``reference / f`` that
the delay model emulates (docs/split_learning.md). Pure torch, no Ray.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import numpy as np
import torch
from torch import Tensor

from eclm.pipelines.split_edge import Stages
from eclm.split import BlockCosts

__all__ = ["time_block_costs"]


def time_block_costs(stages: Stages, example: Tensor, costs: BlockCosts, *, batches: tuple[int, int],
                     reference_speed: float, repeats: int = 5) -> BlockCosts:
    """``costs`` with per-sample and per-call costs measured by timing the stages.

    Args:
        stages: ``ModularModel.chain(sub)``; ``L`` stages (not modified).
        example: ``(1, C, H, W)`` input; only its shape and dtype are used.
        costs: the chain's :class:`BlockCosts` (bytes and memory are kept).
        batches: ``(small, large)`` batch sizes to time, ``1 <= small < large``; the range the
            devices' and the server's batches fall in.
        reference_speed: FLOP/s the timed seconds are expressed at (the speed the planner is
            given for this host).
        repeats: timed runs per stage and batch (after one warm-up); the fastest counts.

    Returns:
        ``costs`` with ``forward_flops`` = per-sample seconds x ``reference_speed`` / (1 +
        ``backward_factor``) and ``call_flops`` = per-call seconds x ``reference_speed``.

    Raises:
        ValueError: On bad ``batches``, ``reference_speed`` or ``repeats``, or a stage count that
            does not match ``costs``.
    """
    small, large = batches
    if not 1 <= small < large:
        raise ValueError(f"batches must be (small, large) with 1 <= small < large, got {batches}")
    if not math.isfinite(reference_speed) or reference_speed <= 0:
        raise ValueError(f"reference_speed must be finite and > 0 FLOP/s, got {reference_speed}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if len(stages) != costs.num_blocks:
        raise ValueError(f"{len(stages)} stages do not match costs of {costs.num_blocks} blocks")
    t_small, t_large = (_stage_seconds(stages, example, b, repeats) for b in (small, large))
    per_sample = np.maximum((t_large - t_small) / (large - small), 0.0)
    call = np.maximum(t_small - small * per_sample, 0.0)
    return dataclasses.replace(costs, forward_flops=per_sample * reference_speed / (1.0 + costs.backward_factor),
                               call_flops=call * reference_speed)


def _stage_seconds(stages: Stages, example: Tensor, batch: int, repeats: int) -> np.ndarray:
    """Fastest forward + backward seconds of every stage (on a copy) at ``batch`` samples."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *example.shape[1:]), generator=gen).to(example.dtype)
    seconds = []
    for i, (_, stage) in enumerate(stages):
        twin = copy.deepcopy(stage).train()  # batch statistics, as in training; the original is untouched
        best = math.inf
        for run in range(repeats + 1):  # run 0 warms up
            inp = x.detach().requires_grad_(i > 0)  # the device's input needs no gradient
            start = time.perf_counter()
            out = twin(inp)
            if out.requires_grad:
                out.backward(torch.ones_like(out))
            if run:
                best = min(best, time.perf_counter() - start)
        seconds.append(best)
        with torch.no_grad():
            x = twin(x)
    return np.array(seconds)
