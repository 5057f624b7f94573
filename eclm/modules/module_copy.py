"""A fast copy of a tree of ``nn.Module`` objects.

``copy.deepcopy`` of a module goes through the generic ``__reduce_ex__`` path for every module
and every one of its dozen bookkeeping dictionaries: 5-7 ms for the scale suite's narrow timm
backbone of about 100 modules (docs/scaling.md), paid for every sub-model a device installs (it
is rebuilt from the device's skeleton) and every one the cloud extracts. :func:`copy_module`
builds the same tree directly, in 1-2 ms for that backbone: a new object of each module's class
with its own attribute dictionary, its own parameter, buffer and child dictionaries, and
everything else deep-copied through one memo (so shared objects stay shared and a method bound
to a module is bound to its copy). Tensors are either shared (a structure to load other weights
into with ``load_state_dict(..., assign=True)``) or cloned (an independent copy, as ``deepcopy``
makes).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Literal

from torch import Tensor, nn

_TENSOR_DICTS = ("_parameters", "_buffers")
#: Immutable values ``deepcopy`` returns as they are.
_ATOMIC = frozenset({bool, int, float, str, type(None)})
_CONTAINERS = frozenset({dict, OrderedDict, set, list})


def copy_module(module: nn.Module, tensors: Literal["share", "clone"] = "clone") -> nn.Module:
    """A copy of ``module``'s tree of modules.

    Args:
        module: The module to copy (not modified).
        tensors: ``"clone"``: every parameter and buffer is a new tensor with the same values,
            ``requires_grad`` and type (a parameter stays a parameter; one shared by two modules
            stays shared by their copies), so the copy shares no storage with ``module``.
            ``"share"``: the copy's parameter and buffer dictionaries are its own but hold
            ``module``'s tensors, e.g. meta tensors of a skeleton that weights are then assigned
            to; modifying those tensors in place modifies ``module``'s.

    Returns:
        The copy: modules of the same classes, with the same attributes, hooks and tensors'
        values, changes to whose structure (a child replaced, a hook registered, a tensor
        assigned) do not reach ``module``.
    """
    if tensors not in ("share", "clone"):
        raise ValueError(f"tensors must be 'share' or 'clone', got {tensors!r}")
    memo: dict[int, object] = {}
    return _copy(module, memo, tensors == "clone")


def _copy(module: nn.Module, memo: dict[int, object], clone: bool) -> nn.Module:
    done = memo.get(id(module))
    if done is not None:
        return done  # a module that appears twice in the tree stays one module
    new = object.__new__(type(module))
    memo[id(module)] = new
    state = {}
    for key, value in module.__dict__.items():
        if key == "_modules":
            state[key] = {name: None if child is None else _copy(child, memo, clone) for name, child in value.items()}
        elif key in _TENSOR_DICTS:
            state[key] = {name: None if t is None else _tensor(t, memo, clone) for name, t in value.items()}
        elif isinstance(value, nn.Module):
            state[key] = _copy(value, memo, clone)
        elif isinstance(value, Tensor):
            state[key] = _tensor(value, memo, clone)
        elif type(value) in _ATOMIC:
            state[key] = value
        elif type(value) in _CONTAINERS and not value:
            state[key] = type(value)()  # the hook dictionaries, almost always empty
        else:
            state[key] = copy.deepcopy(value, memo)  # hooks, names, settings: through the one memo
    new.__dict__.update(state)
    return new


def _tensor(t: Tensor, memo: dict[int, object], clone: bool) -> Tensor:
    if not clone:
        return t
    done = memo.get(id(t))
    if done is None:
        done = copy.deepcopy(t, memo)  # a Parameter stays a Parameter, with its requires_grad
    return done


__all__ = ["copy_module"]
