"""Integrity checks on a device update before it may touch the cloud model."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from eclm.modules._surgery import positions
from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import ModuleUpdate, expected_shape, tensor_owner
from eclm.modules.spec import SubModelSpec
from eclm.pipelines.defences.claims import ClaimBounds, check_claims


def check_update(
    update: ModuleUpdate,
    cloud_state: dict[str, Tensor],
    layers: Sequence[ModuleLayer],
    expected_spec: SubModelSpec,
    expected_names: set[str],
    *,
    max_relative_norm: float,
    max_samples: int | None = None,
    claims: ClaimBounds | None = None,
    known_classes: Collection[int] | None = None,
) -> list[str]:
    """Every problem found with ``update`` (an empty list means it passes).

    Checks: the spec is the one the device was given (or a subset of it, after a local swap);
    what the device claims (importance, classes, sample count, metrics) is within ``claims``
    (:func:`~eclm.pipelines.defences.claims.check_claims`); tensor names are exactly those of
    that sub-model (a subset for a module-sparse upload, whose carried modules must lie within
    it); shapes and dtypes match what the spec implies; all values are finite; and
    the change of each tensor relative to the cloud's corresponding slices, over all trained
    tensors together, is bounded: ``||w - w_cloud|| <= max_relative_norm * (||w_cloud|| + 1e-3)``.

    Args:
        update: The device's update.
        cloud_state: The cloud backbone state.
        layers: The cloud model's module layers.
        expected_spec: The spec the device was given.
        expected_names: Tensor names of a sub-model with ``update.spec``.
        max_relative_norm: The absolute bound on the change norm.
        max_samples: Largest plausible sample count (used when ``claims`` sets none).
        claims: Bounds on the device's claims (default: :class:`ClaimBounds` defaults).
        known_classes: The classes the cloud knows the device holds.

    Returns:
        The problems found (empty: the update passes).
    """
    problems: list[str] = []
    if update.spec.model_id != expected_spec.model_id:
        return [f"spec is for model {update.spec.model_id}, cloud is {expected_spec.model_id}"]
    if not expected_spec.contains(update.spec):
        problems.append("spec holds modules the device was never given")
    bounds = claims if claims is not None else ClaimBounds()
    if bounds.max_samples is None and max_samples is not None:
        bounds = replace(bounds, max_samples=max_samples)
    problems += check_claims(update, layers, bounds, known_classes)
    problems += _name_problems(update, expected_names)
    tensor_problems, change, reference = _tensor_problems(update, cloud_state, layers)
    problems += tensor_problems
    # One bound over the whole update: single tensors (e.g. zero-initialised norm scales) can
    # legitimately move far relative to their own tiny norm, a poisoned update moves the model.
    bound = max_relative_norm * (reference + 1e-3)
    if not problems and change > bound:
        problems.append(f"update norm {change:.4g} exceeds bound {bound:.4g} ({max_relative_norm} x cloud norm)")
    return problems


def _name_problems(update: ModuleUpdate, expected_names: set[str]) -> list[str]:
    """The update's tensors must be the sub-model's; a module-sparse upload carries a subset of
    them, of modules within its sub-model."""
    names = set(update.state)
    if update.trained is not None:
        problems = [] if update.spec.contains(update.trained) else ["a sparse upload carries modules outside its sub-model"]
        if not names <= expected_names:
            problems.append(f"tensor names differ: unexpected {sorted(names - expected_names)[:3]}")
        return problems
    if names != expected_names:
        missing, extra = sorted(expected_names - names), sorted(names - expected_names)
        return [f"tensor names differ: missing {missing[:3]}, unexpected {extra[:3]}"]
    return []


def _tensor_problems(update: ModuleUpdate, cloud_state: dict[str, Tensor],
                     layers: Sequence[ModuleLayer]) -> tuple[list[str], float, float]:
    """Shape, dtype and finiteness problems, and the norms of the change and of the cloud slices."""
    problems: list[str] = []
    change_sq, ref_sq = 0.0, 0.0
    for key, value in update.state.items():
        if key not in cloud_state:
            continue
        cloud = cloud_state[key]
        want = expected_shape(layers, cloud.shape, key, update.carried)
        if value.shape != want:
            problems.append(f"{key}: shape {tuple(value.shape)} != expected {tuple(want)}")
            continue
        if value.dtype != cloud.dtype:
            problems.append(f"{key}: dtype {value.dtype} != {cloud.dtype}")
            continue
        if not value.is_floating_point():
            continue
        if not torch.isfinite(value).all():
            problems.append(f"{key}: non-finite values")
            continue
        if "running_var" in key or "running_mean" in key:
            continue  # statistics legitimately move with the data distribution
        ref = _cloud_slice(cloud, layers, key, update.carried).double()
        change_sq += float((value.double() - ref).pow(2).sum())
        ref_sq += float(ref.pow(2).sum())
    return problems, change_sq**0.5, ref_sq**0.5


def _cloud_slice(cloud: Tensor, layers: Sequence[ModuleLayer], key: str, spec: SubModelSpec) -> Tensor:
    owner = tensor_owner(layers, key)
    if owner is None:
        return cloud
    idx, rel = owner
    dim, full_owner = layers[idx].sliced[rel]
    return cloud.index_select(dim, positions(full_owner, spec.groups[idx]))
