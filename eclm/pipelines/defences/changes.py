"""An update as the change it makes to the cloud, cut into the units the module-wise merge combines.

The merge (docs/architecture.md, *A cycle*) combines contributions per *unit*: one hidden group
(module) of one split tensor, one classifier row (with ``merge.head_by_class``), or one whole
shared tensor. Devices hold different modules, so any statistic that compares devices must
compare them unit by unit, over the devices that hold that unit. This file turns an upload into
``{unit: change}`` with ``change = uploaded weights - cloud weights`` (for a delta
upload, re-based on the cloud's current slices, this is the device's own delta).

Only learned floating-point tensors count; BatchNorm running statistics are data statistics and
are not merged by default (``merge.merge_norm_statistics``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from eclm.modules._surgery import positions
from eclm.modules.deltas import is_delta_key
from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import tensor_owner
from eclm.modules.spec import SubModelSpec


class Unit(NamedTuple):
    """One merge unit: tensor ``key`` restricted to ``index`` (a module group or a class row;
    ``None`` for a whole shared tensor). ``module`` names it in reports."""

    key: str
    index: int | None
    module: str


def unit_changes(
    state: dict[str, Tensor],
    spec: SubModelSpec,
    layers: Sequence[ModuleLayer],
    cloud_state: dict[str, Tensor] | None = None,
    *,
    class_rows: Collection[str] = (),
    classes: Collection[int] | None = None,
) -> dict[Unit, Tensor]:
    """Split a sub-model state (or a change of one) into per-unit float32 changes.

    Args:
        state: Sub-model tensors (timm names, shapes sliced as ``spec`` implies).
        spec: Which module groups ``state`` holds.
        layers: The cloud model's module layers.
        cloud_state: The cloud backbone state; the change is ``state - cloud slice``. ``None``
            means ``state`` already is a change (e.g. a reference update).
        class_rows: Classifier tensors merged row by row (one unit per class row).
        classes: The classes whose rows the device contributes (``None``: every row).

    Returns:
        ``{Unit: 2-D float32 tensor}``: the unit's part of its tensor as ``(shape[0], rest)``
        (a classifier row or a vector as one row), so that statistics of the matrix (its rank,
        :mod:`~eclm.pipelines.defences.spectrum`) and of the flattened change (norms, cosines)
        can both be read; tensors that are not learned weights are left out.
    """
    out: dict[Unit, Tensor] = {}
    for key in sorted(state):
        value = state[key]
        if not is_delta_key(key, value):
            continue
        cloud = cloud_state.get(key) if cloud_state is not None else None
        if cloud_state is not None and cloud is None:
            continue  # not a cloud tensor: integrity reports it, nothing to compare against
        if key in class_rows:
            rows = range(value.shape[0]) if classes is None else sorted(c for c in classes if 0 <= c < value.shape[0])
            for row in rows:
                base = cloud[row] if cloud is not None else 0.0
                out[Unit(key, row, f"head/class{row}")] = _matrix(value[row] - base)
            continue
        owner = tensor_owner(layers, key)
        if owner is None:
            out[Unit(key, None, "shared")] = _matrix(value - cloud if cloud is not None else value)
            continue
        idx, rel = owner
        dim, full_owner = layers[idx].sliced[rel]
        held = full_owner[positions(full_owner, spec.groups[idx])]
        for g in spec.groups[idx]:
            part = value.index_select(dim, positions(held, [g]))
            if cloud is not None:
                part = part - cloud.index_select(dim, positions(full_owner, [g]))
            out[Unit(key, g, f"{layers[idx].name}/m{g}")] = _matrix(part)
    return out


def _matrix(t: Tensor) -> Tensor:
    t = t.detach().to(torch.float32)
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
