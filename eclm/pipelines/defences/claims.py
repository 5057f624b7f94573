"""Bounds on everything a device *claims* about its update (the JSON beside the weights).

A device states its importance summary, its classes, its sample count and its metrics. These
numbers steer the merge (importance x samples weights every module; classes decide which
classifier rows it may move), so a device that lies about them can dominate the merge without
sending a single odd weight: importance 1e9 or -1e6 turned module weights into +100 / -99 on
the main branch. Each claim is checked against what an honest device can send:

* importance: an L x N_l table of finite numbers in ``[0, 1]``, each row summing to 1 within
  ``importance_tolerance`` (it is a mean of softmax probabilities);
* classes: distinct integers, all among the classes the cloud knows the device holds (or, when
  the cloud knows nothing about it, among the dataset's classes);
* num_samples: a finite whole number in ``[1, max_samples]``;
* metrics: every number finite (nested lists and mappings too); strings, booleans and ``None``
  are allowed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import ModuleUpdate


@dataclass(frozen=True)
class ClaimBounds:
    """What an honest device can claim.

    Attributes:
        max_samples: Largest plausible local training set (``None``: no upper bound).
        num_classes: Classes of the dataset (``None``: not checked).
        importance_tolerance: Allowed distance of each importance row's sum from 1.
    """

    max_samples: float | None = None
    num_classes: int | None = None
    importance_tolerance: float = 1e-2


def check_claims(
    update: ModuleUpdate,
    layers: Sequence[ModuleLayer],
    bounds: ClaimBounds,
    known_classes: Collection[int] | None = None,
) -> list[str]:
    """Every problem with the claims of ``update`` (an empty list means they are plausible).

    Args:
        update: The device's update (its importance, classes, num_samples and metrics are read).
        layers: The cloud model's module layers (the importance table's shape).
        bounds: The bounds to check against.
        known_classes: The classes the cloud knows this device holds (``None``: unknown).

    Returns:
        Human-readable problems, one per broken claim.
    """
    problems = [
        _importance_problem(update.importance, layers, bounds.importance_tolerance),
        _classes_problem(update.classes, bounds.num_classes, known_classes),
        _samples_problem(update.num_samples, bounds.max_samples),
        _metrics_problem(getattr(update, "metrics", None)),
    ]
    return [p for p in problems if p]


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _importance_problem(importance: object, layers: Sequence[ModuleLayer], tolerance: float) -> str | None:
    if not isinstance(importance, Sequence) or isinstance(importance, str) or len(importance) != len(layers) or any(
        not isinstance(row, Sequence) or isinstance(row, str) or len(row) != layer.n_modules
        for row, layer in zip(importance, layers, strict=False)
    ):
        return "importance summary has the wrong shape (one row of module importances per module layer)"
    for i, row in enumerate(importance):
        if not all(_is_number(v) and math.isfinite(v) for v in row):
            return f"importance summary is not finite (layer {i})"
        if any(not 0.0 <= v <= 1.0 for v in row):
            return f"importance outside [0, 1] in layer {i}: {[float(v) for v in row][:4]}"
        if abs(math.fsum(row) - 1.0) > tolerance:
            return f"importance of layer {i} sums to {math.fsum(row):.4g}, not 1 (tolerance {tolerance:g})"
    return None


def _classes_problem(classes: object, num_classes: int | None, known: Collection[int] | None) -> str | None:
    if classes is None:
        return None if known is None else "no classes claimed, but the cloud knows the device's classes"
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in classes
    ):
        return "classes must be a list of integers"
    if len(set(classes)) != len(classes):
        return f"classes listed twice: {sorted(classes)}"
    if known is not None:
        foreign = sorted(set(classes) - set(known))
        if foreign:
            return f"claims classes {foreign} the device does not hold (it holds {sorted(known)})"
    elif num_classes is not None and any(not 0 <= c < num_classes for c in classes):
        return f"classes outside 0..{num_classes - 1}: {sorted(classes)}"
    return None


def _samples_problem(num_samples: object, max_samples: float | None) -> str | None:
    if not _is_number(num_samples) or not math.isfinite(num_samples):
        return f"num_samples must be a finite number, got {num_samples!r}"
    if num_samples != int(num_samples):
        return f"num_samples must be a whole number, got {num_samples}"
    if num_samples < 1:
        return f"num_samples must be >= 1, got {num_samples}"
    if max_samples is not None and num_samples > max_samples:
        # a device claiming more data than it can hold would dominate sample-weighted averages
        return f"num_samples {num_samples} exceeds the plausible maximum {max_samples:g}"
    return None


def _metrics_problem(metrics: object, path: str = "metrics") -> str | None:
    if metrics is None or isinstance(metrics, str | bool):
        return None
    if _is_number(metrics):
        return None if math.isfinite(metrics) else f"{path} is not finite ({metrics})"
    if isinstance(metrics, Mapping):
        items = ((f"{path}.{k}", v) for k, v in metrics.items())
    elif isinstance(metrics, Sequence):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(metrics))
    else:
        return f"{path} has an unsupported type {type(metrics).__name__}"
    for where, value in items:
        problem = _metrics_problem(value, where)
        if problem:
            return problem
    return None
