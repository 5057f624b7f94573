"""Drift scores for a device's incoming data.

Two signals, both in "multiples of a configured scale" so 1.0 means "clearly drifted":

* **labelled**: accuracy drop of the held sub-model on the newly arrived labelled data relative to
  its accuracy right after the last adaptation, divided by ``accuracy_drop``;
* **label-free**: total-variation shift of the selector's mean module-probability distribution
  (the device's importance summary) since the last adaptation, divided by ``shift_scale``.

The combined score is the maximum of the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class DriftScore:
    labelled: float
    label_free: float

    @property
    def combined(self) -> float:
        return max(self.labelled, self.label_free)


def importance_shift(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Mean over layers of the total-variation distance between two importance summaries."""
    dists = [0.5 * float(np.abs(np.asarray(x) - np.asarray(y)).sum()) for x, y in zip(a, b, strict=True)]
    return float(np.mean(dists)) if dists else 0.0


class DriftDetector:
    """Keeps the reference state of one device and scores new observations.

    Args:
        accuracy_drop: Accuracy drop that scores 1.0.
        shift_scale: Importance total-variation shift that scores 1.0.
    """

    def __init__(self, accuracy_drop: float = 0.1, shift_scale: float = 0.05) -> None:
        self.accuracy_drop = accuracy_drop
        self.shift_scale = shift_scale
        self.reference_accuracy: float | None = None
        self.reference_importance: list[list[float]] | None = None

    def score(self, accuracy: float | None, importance: Sequence[Sequence[float]] | None) -> DriftScore:
        """Score an observation against the reference (0 where there is no reference yet)."""
        labelled = 0.0
        if accuracy is not None and self.reference_accuracy is not None and np.isfinite(accuracy):
            labelled = max(0.0, self.reference_accuracy - accuracy) / self.accuracy_drop
        label_free = 0.0
        if importance is not None and self.reference_importance is not None:
            label_free = importance_shift(importance, self.reference_importance) / self.shift_scale
        return DriftScore(labelled, label_free)

    def update_reference(self, accuracy: float | None, importance: Sequence[Sequence[float]] | None) -> None:
        """Record the state right after an adaptation."""
        if accuracy is not None and np.isfinite(accuracy):
            self.reference_accuracy = accuracy
        if importance is not None:
            self.reference_importance = [list(map(float, v)) for v in importance]

    def state_dict(self) -> dict:
        """The reference state as JSON-able values."""
        return {"reference_accuracy": self.reference_accuracy, "reference_importance": self.reference_importance}

    def load_state_dict(self, state: dict) -> None:
        self.reference_accuracy = state.get("reference_accuracy")
        ref = state.get("reference_importance")
        self.reference_importance = [list(map(float, v)) for v in ref] if ref is not None else None

