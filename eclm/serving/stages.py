"""Cut a chain of modules into pipeline stages, profile its blocks, and run stages in-process.

A "block" is one element of the chain (an ``nn.Sequential`` child or an item of a module list);
it must take the previous block's output as its only input. Profiling gives the numbers a
:class:`~eclm.serving.partition_problem.PartitionProblem` needs: seconds per block, bytes at each
cut, bytes of parameters per block.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eclm.serving.partition_problem import PartitionPlan


def as_blocks(model: nn.Sequential | Sequence[nn.Module]) -> list[nn.Module]:
    """The chain's blocks as a list (modules are shared, not copied).

    Raises:
        TypeError: If ``model`` is neither an ``nn.Sequential`` nor a sequence of ``nn.Module``.
        ValueError: If the chain is empty.
    """
    if isinstance(model, nn.Sequential):
        blocks = list(model.children())
    elif isinstance(model, Sequence) and not isinstance(model, (str, bytes)):
        blocks = list(model)
    else:
        raise TypeError(f"model must be nn.Sequential or a sequence of nn.Module, got {type(model).__name__}")
    for i, b in enumerate(blocks):
        if not isinstance(b, nn.Module):
            raise TypeError(f"block {i} must be an nn.Module, got {type(b).__name__}")
    if not blocks:
        raise ValueError("model must contain at least one block")
    return blocks


def payload_nbytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or nested tuples/lists/dicts of tensors).

    Non-tensor leaves count as 0: they are small metadata next to activations.
    """
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(payload_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(payload_nbytes(v) for v in value)
    return 0


def block_memory_bytes(blocks: Sequence[nn.Module]) -> list[int]:
    """Bytes of parameters and buffers held by each block (activation workspace not included)."""
    return [sum(payload_nbytes(t) for t in (*b.parameters(), *b.buffers())) for b in blocks]


@dataclass(frozen=True)
class BlockProfile:
    """Measured profile of a block chain for one input shape.

    Attributes:
        block_seconds: ``[n_blocks]`` median forward time per block, seconds.
        input_bytes: Bytes of the example input (the cut before block 0).
        activation_bytes: ``[n_blocks]`` bytes of each block's output (the cut after it).
        block_memory: ``[n_blocks]`` bytes of parameters and buffers per block.
    """

    block_seconds: tuple[float, ...]
    input_bytes: int
    activation_bytes: tuple[int, ...]
    block_memory: tuple[int, ...]


def measure_block_latencies(
    blocks: nn.Sequential | Sequence[nn.Module],
    example_input: torch.Tensor,
    repeats: int = 5,
    warmup: int = 1,
) -> BlockProfile:
    """Time each block's forward pass on CPU with real inputs.

    Blocks run in eval mode under ``torch.no_grad`` (their previous train/eval flags are restored
    afterwards, so profiling never updates BatchNorm statistics). Each repeat runs the whole chain
    once, timing every block on the activation the previous block produced; the median over
    repeats is reported because single timings are skewed by OS noise.

    Args:
        blocks: The chain.
        example_input: A representative input, shape ``(batch, ...)``; the batch size should be
            the one that will be served.
        repeats: Timed runs (>= 1).
        warmup: Untimed runs before timing (>= 0), to populate allocator caches.

    Returns:
        The :class:`BlockProfile`.

    Raises:
        ValueError: If ``repeats`` < 1 or ``warmup`` < 0.
    """
    chain = as_blocks(blocks)
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    modes = [(m, m.training) for b in chain for m in b.modules()]
    timings: list[list[float]] = [[] for _ in chain]
    activation_bytes: list[int] = []
    try:
        for b in chain:
            b.eval()
        with torch.no_grad():
            for run in range(warmup + repeats):
                x = example_input
                for k, block in enumerate(chain):
                    start = time.perf_counter()
                    x = block(x)
                    elapsed = time.perf_counter() - start
                    if run >= warmup:
                        timings[k].append(elapsed)
                    if run == 0:
                        activation_bytes.append(payload_nbytes(x))
    finally:
        for m, training in modes:
            m.training = training
    return BlockProfile(
        block_seconds=tuple(statistics.median(t) for t in timings),
        input_bytes=payload_nbytes(example_input),
        activation_bytes=tuple(activation_bytes),
        block_memory=tuple(block_memory_bytes(chain)),
    )


def split_into_stages(
    blocks: nn.Sequential | Sequence[nn.Module],
    plan: PartitionPlan,
    *,
    copy_modules: bool = False,
) -> list[nn.Sequential]:
    """One ``nn.Sequential`` per active stage of ``plan``, in pipeline order.

    Args:
        blocks: The chain the plan was made for.
        plan: The partition plan (its ``boundaries[-1]`` must equal the number of blocks).
        copy_modules: Deep-copy the blocks so stages share no parameters with ``blocks``
            (e.g. before handing them to separately-updated workers). By default they share.

    Returns:
        ``len(plan.stages)`` stage modules; stage ``s`` runs blocks
        ``[plan.stages[s].start, plan.stages[s].stop)``.

    Raises:
        ValueError: If the plan does not cover exactly this chain.
    """
    chain = as_blocks(blocks)
    if plan.boundaries[-1] != len(chain):
        raise ValueError(f"plan covers {plan.boundaries[-1]} blocks but the chain has {len(chain)}")
    stages = []
    for stage in plan.stages:
        modules = chain[stage.start:stage.stop]
        stages.append(nn.Sequential(*(copy.deepcopy(m) if copy_modules else m for m in modules)))
    return stages


def run_pipeline_inprocess(stages: Sequence[nn.Module], x: Any) -> Any:
    """Run ``x`` through ``stages`` one after another in this process, under ``torch.no_grad``.

    The reference for distributed pipelines: the same stages spread over workers must produce
    exactly this output.

    Raises:
        ValueError: If ``stages`` is empty.
    """
    if len(stages) == 0:
        raise ValueError("stages must hold at least one module")
    with torch.no_grad():
        for stage in stages:
            x = stage(x)
    return x
