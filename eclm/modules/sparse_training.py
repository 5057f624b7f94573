"""Module-sparse training of a compact sub-model: only the trainable slices get gradients.

A module is a slice of the block's tensors (rows of the input projection, its norm channels,
columns of the output projection), so freezing some modules of a block means freezing part of a
tensor. :func:`module_sparse` makes the trainable part of such a tensor its own small parameter
(a ``torch.nn.utils.parametrize`` parametrization writes it into the frozen full tensor on every
forward), so gradients and optimizer state exist only for what is trained. Tensors that are wholly
trainable stay ordinary parameters; everything else has ``requires_grad`` off. The chain of stages
before the earliest trainable one runs without autograd (``torch.no_grad``): nothing is kept for
backward there. On exit every tensor is a plain parameter again under its own name, holding the
trained values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from eclm.modules._surgery import positions
from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import classifier_keys, tensor_owner
from eclm.modules.registry import adapter_for
from eclm.modules.spec import SubModelSpec, TrainableSpec


class _Slice(nn.Module):
    """Parametrization: the full tensor is ``frozen`` with ``index`` along ``dim`` taken from the
    trainable parameter (which holds only those entries)."""

    def __init__(self, full: Tensor, dim: int, index: Tensor) -> None:
        super().__init__()
        self.register_buffer("frozen", full.detach(), persistent=False)
        self.dim = dim
        self.register_buffer("index", index, persistent=False)

    def forward(self, trainable: Tensor) -> Tensor:
        return self.frozen.index_copy(self.dim, self.index, trainable)

    def right_inverse(self, full: Tensor) -> Tensor:
        return full.detach().index_select(self.dim, self.index).clone()


def trainable_slices(model: nn.Module, layers: Sequence[ModuleLayer], spec: SubModelSpec,
                     plan: TrainableSpec) -> dict[str, tuple[int, Tensor] | None]:
    """Per trainable parameter of ``model`` (sub-model ``spec``), ``None`` if it is trained whole,
    else ``(dim, index)`` of its trainable entries. Frozen parameters are absent.

    Raises:
        ValueError: If ``plan`` trains a module ``spec`` does not hold.
    """
    if not plan.within(spec):
        raise ValueError("the trainable plan names modules the sub-model does not hold")
    head = set(classifier_keys(model))
    out: dict[str, tuple[int, Tensor] | None] = {}
    for name, _ in model.named_parameters():
        if name in head:
            if plan.head_rows is None:
                out[name] = None
            elif plan.head_rows:
                out[name] = (0, torch.as_tensor(plan.head_rows, dtype=torch.long))
            continue
        owner = tensor_owner(layers, name)
        if owner is None:
            if plan.shared:
                out[name] = None
            continue
        idx, rel = owner
        trained, held = plan.groups[idx], spec.groups[idx]
        if not trained:
            continue
        if set(trained) == set(held):
            out[name] = None
        else:
            out[name] = (layers[idx].sliced[rel][0], positions(layers[idx].owner_within(rel, list(held)), trained))
    return out


@dataclass(frozen=True)
class SparsePlan:
    """What to train of a compact sub-model.

    Attributes:
        layers: The modular model's layer metadata.
        spec: The sub-model the compact model is.
        trainable: What of it to train.
    """

    layers: Sequence[ModuleLayer]
    spec: SubModelSpec
    trainable: TrainableSpec


@dataclass
class SparseTraining:
    """A sub-model prepared for module-sparse training.

    Attributes:
        params: The parameters the optimizer holds (whole tensors and trainable slices).
        frozen: Chain stages before the earliest trainable one: they run in eval mode (norm
            statistics as re-estimated on the device's data) without autograd, so their output for
            a sample does not change during training and can be computed once.
        trained: Chain stages from the earliest trainable one on.
    """

    params: list[nn.Parameter]
    frozen: list[nn.Module]
    trained: list[nn.Module]

    @torch.no_grad()
    def prefix(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """The frozen stages' output for ``x`` (eval mode, no autograd; ``x`` itself without any)."""
        if not self.frozen:
            return x
        for stage in self.frozen:
            stage.eval()
        outs = []
        for i in range(0, len(x), batch_size):
            h = x[i : i + batch_size]
            for stage in self.frozen:
                h = stage(h)
            outs.append(h)
        return torch.cat(outs) if outs else x[:0]

    def suffix(self, h: Tensor) -> Tensor:
        """The trained stages on the frozen stages' output (with autograd)."""
        for stage in self.trained:
            h = stage(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.suffix(self.prefix(x))

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@contextmanager
def module_sparse(model: nn.Module, plan: SparsePlan) -> Iterator[SparseTraining]:
    """Prepare ``model`` for training only what ``plan`` names (see the module docstring).

    Raises:
        ValueError: If the trainable spec does not fit the sub-model.
    """
    slices = trainable_slices(model, plan.layers, plan.spec, plan.trainable)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    owners = []
    try:
        params = []
        for name, param in model.named_parameters():
            param.requires_grad_(name in slices and slices[name] is None)
            if name in slices and slices[name] is None:
                params.append(param)
        for name, (dim, index) in ((n, s) for n, s in slices.items() if s is not None):
            path, _, attr = name.rpartition(".")
            owner = model.get_submodule(path)
            parametrize.register_parametrization(owner, attr, _Slice(getattr(owner, attr), dim, index), unsafe=True)
            owners.append((owner, attr))
            original = owner.parametrizations[attr].original
            original.requires_grad_(True)
            params.append(original)
        yield _split_chain(model, params)
    finally:
        for owner, attr in owners:
            parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
        for name, param in model.named_parameters():
            param.requires_grad_(flags.get(name, True))


def _split_chain(model: nn.Module, params: list[nn.Parameter]) -> SparseTraining:
    """The model's chain split before the first stage holding a trainable parameter."""
    stages = [stage for _, stage in adapter_for(model).chain(model)]
    ids = {id(p) for p in params}
    first = next((i for i, s in enumerate(stages) if any(id(p) in ids for p in s.parameters())), len(stages))
    if first == len(stages):  # nothing to train: keep the last stage "trained" so a forward still works
        first = len(stages) - 1
    return SparseTraining(params=params, frozen=stages[:first], trained=stages[first:])


__all__ = ["SparsePlan", "SparseTraining", "module_sparse", "trainable_slices"]
