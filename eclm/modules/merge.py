"""Module-wise merge math (ECLM, arXiv 2311.11083; docs/architecture.md): fold device sub-models back into the cloud model.

For module (l, i) the new weights are ``sum_k a_k w_k`` over the devices k whose sub-model holds
the module, with ``a_k`` the device's normalised importance for that module (optionally times
its sample count). Tensors of a layer that are not split into modules, and everything outside
module layers, are averaged over the devices that hold them, weighted by sample count. Modules
and tensors no device holds stay bit-identical. With a single contributing device the weight is
exactly 1.0, so its weights land in the cloud slices exactly.

This module only does arithmetic; validation (integrity checks, evaluation, accept/reject) is
the platform's validated-merge pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from eclm.modules._surgery import positions
from eclm.modules.layer import ModuleLayer
from eclm.modules.spec import SubModelSpec

Weighting = Literal["importance", "importance_samples", "samples", "uniform"]
Reducer = Callable[[list[Tensor], list[float]], Tensor]


def weighted_sum(tensors: list[Tensor], weights: list[float]) -> Tensor:
    """``sum_k w_k t_k``; a single tensor with weight 1.0 is returned exactly (cloned)."""
    if len(tensors) == 1 and weights[0] == 1.0:
        return tensors[0].clone()
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights, tensors, strict=True):
        out += w * t
    return out


@dataclass
class ModuleUpdate:
    """One device's uploaded sub-model.

    Attributes:
        device_id: Device name.
        spec: The sub-model's spec.
        state: The sub-model's ``state_dict`` (timm key names, sliced shapes).
        importance: Per layer, per module importance on the device's data.
        num_samples: Local samples the update was trained on.
        classes: Classes in the device's data (used to merge classifier rows by class), or
            ``None`` if unknown (then the device contributes to every row).
        metrics: What the device reports about its adaptation (checked for finite numbers only).
        trained: For a module-sparse upload, the modules it carries (a subset of ``spec``; module
            slices in ``state`` are restricted to them); ``None``: every module of ``spec``. A
            module or tensor an upload does not carry is not contributed.
    """

    device_id: str
    spec: SubModelSpec
    state: dict[str, Tensor]
    importance: Sequence[Sequence[float]]
    num_samples: int
    classes: Sequence[int] | None = None
    metrics: dict | None = None
    trained: SubModelSpec | None = None

    @property
    def carried(self) -> SubModelSpec:
        """The modules whose slices ``state`` holds."""
        return self.trained if self.trained is not None else self.spec


def tensor_owner(layers: Sequence[ModuleLayer], key: str) -> tuple[int, str] | None:
    """``(layer index, key relative to the block)`` if ``key`` is split into modules, else None."""
    for idx, layer in enumerate(layers):
        prefix = layer.name + "."
        if key.startswith(prefix) and key[len(prefix) :] in layer.sliced:
            return idx, key[len(prefix) :]
    return None


def expected_shape(layers: Sequence[ModuleLayer], cloud_shape: torch.Size, key: str, spec: SubModelSpec) -> torch.Size:
    """Shape ``key`` must have in a sub-model with ``spec`` (the cloud shape for unsplit tensors)."""
    owner = tensor_owner(layers, key)
    if owner is None:
        return cloud_shape
    idx, rel = owner
    dim, full_owner = layers[idx].sliced[rel]
    shape = list(cloud_shape)
    shape[dim] = int(positions(full_owner, spec.groups[idx]).numel())
    return torch.Size(shape)


def _weights(raw: list[float]) -> list[float]:
    total = sum(raw)
    if total <= 0:
        return [1.0 / len(raw)] * len(raw)
    return [r / total for r in raw]


def merge_module_updates(
    cloud_state: dict[str, Tensor],
    layers: Sequence[ModuleLayer],
    updates: Sequence[ModuleUpdate],
    *,
    weighting: Weighting = "importance",
    reducer: Reducer | None = None,
    skip: Callable[[str], bool] | None = None,
    class_rows: Sequence[str] = (),
) -> dict[str, Tensor]:
    """Compute the merged cloud backbone state (a new dict; inputs are not modified).

    Args:
        cloud_state: The cloud backbone's ``state_dict``.
        layers: The modular model's layer metadata.
        updates: Device uploads (assumed validated: names and shapes as their specs imply).
        weighting: How module slices are weighted: ``"importance"`` (paper), ``"importance_samples"``,
            ``"samples"`` or ``"uniform"``. Unsplit tensors are always sample-weighted.

    Returns:
        New state dict; entries nobody updated are the very same tensors as in ``cloud_state``.
    """
    reduce = reducer or weighted_sum
    new_state = dict(cloud_state)
    if not updates:
        return new_state
    for key, cloud in cloud_state.items():
        holders = [u for u in updates if key in u.state]
        if not holders or not cloud.is_floating_point() or (skip is not None and skip(key)):
            continue
        if key in class_rows:
            new_state[key] = _merge_class_rows(cloud, key, holders, reduce)
            continue
        owner = tensor_owner(layers, key)
        if owner is None:
            w = _weights([float(u.num_samples) for u in holders])
            new_state[key] = reduce([u.state[key].to(cloud.dtype) for u in holders], w)
            continue
        idx, rel = owner
        dim, full_owner = layers[idx].sliced[rel]
        out = cloud.clone()
        touched = False
        for g in range(layers[idx].n_modules):
            group_holders = [u for u in holders if g in u.carried.groups[idx]]
            if not group_holders:
                continue
            raw = [_module_weight(u, idx, g, weighting) for u in group_holders]
            w = _weights(raw)
            cloud_pos = positions(full_owner, [g])
            parts = []
            for u in group_holders:
                dev_owner = full_owner[positions(full_owner, u.carried.groups[idx])]
                parts.append(u.state[key].to(cloud.dtype).index_select(dim, positions(dev_owner, [g])))
            out.index_copy_(dim, cloud_pos, reduce(parts, w))
            touched = True
        if touched:
            new_state[key] = out
    return new_state


def _merge_class_rows(cloud: Tensor, key: str, holders: Sequence[ModuleUpdate], reduce: Reducer) -> Tensor:
    out = cloud.clone()
    for row in range(cloud.shape[0]):
        rows_holders = [u for u in holders if u.classes is None or row in u.classes]
        if rows_holders:
            w = _weights([float(u.num_samples) for u in rows_holders])
            out[row] = reduce([u.state[key][row].to(cloud.dtype) for u in rows_holders], w)
    return out


def classifier_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of a timm model's classifier (``get_classifier()``), rows = classes."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Linear):
        return []
    for name, module in model.named_modules():
        if module is head:
            return [f"{name}.{p}" for p, _ in head.named_parameters()]
    return []


def _module_weight(u: ModuleUpdate, layer: int, group: int, weighting: Weighting) -> float:
    imp = float(u.importance[layer][group])
    if weighting == "importance":
        return imp
    if weighting == "importance_samples":
        return imp * u.num_samples
    if weighting == "samples":
        return float(u.num_samples)
    return 1.0


def is_norm_statistic(key: str) -> bool:
    """Whether ``key`` is a BatchNorm running statistic (data statistics, not learned weights)."""
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))
