"""Drift scores: labelled (accuracy drop) and label-free (importance shift), hand-computed."""

from __future__ import annotations

import math

import pytest

from eclm.pipelines.drift_detection import DriftDetector, DriftScore, importance_shift

REF = [[0.5, 0.5], [0.25, 0.75]]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (REF, REF, 0.0),
        ([[1.0, 0.0]], [[0.0, 1.0]], 1.0),
        ([[1.0, 0.0]], [[0.5, 0.5]], 0.5),
        ([[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]], 0.5),  # mean over layers: (1 + 0) / 2
        ([[0.2, 0.3, 0.5]], [[0.3, 0.3, 0.4]], 0.1),
    ],
)
def test_importance_shift_is_the_mean_total_variation(a, b, expected):
    assert importance_shift(a, b) == pytest.approx(expected)
    assert importance_shift(b, a) == pytest.approx(expected)


def test_importance_shift_needs_matching_layers():
    with pytest.raises(ValueError):
        importance_shift([[1.0, 0.0]], [[1.0, 0.0], [0.5, 0.5]])


def test_no_reference_scores_zero():
    score = DriftDetector().score(0.1, REF)
    assert (score.labelled, score.label_free, score.combined) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("accuracy", "importance", "labelled", "label_free"),
    [
        (0.9, REF, 0.0, 0.0),  # same as the reference
        (0.7, REF, 2.0, 0.0),  # 0.2 drop / 0.1
        (0.85, REF, 0.5, 0.0),
        (0.95, REF, 0.0, 0.0),  # improvement is not drift
        (0.9, [[0.6, 0.4], [0.25, 0.75]], 0.0, 1.0),  # TV (0.1 + 0) / 2 = 0.05 / 0.05
        (0.6, [[1.0, 0.0], [0.25, 0.75]], 3.0, 5.0),  # TV 0.25 / 0.05
        (float("nan"), REF, 0.0, 0.0),  # an empty test set gives nan: no labelled signal
        (None, None, 0.0, 0.0),
    ],
)
def test_scores_against_the_reference(accuracy, importance, labelled, label_free):
    det = DriftDetector(accuracy_drop=0.1, shift_scale=0.05)
    det.update_reference(0.9, REF)
    score = det.score(accuracy, importance)
    assert score.labelled == pytest.approx(labelled)
    assert score.label_free == pytest.approx(label_free)
    assert score.combined == pytest.approx(max(labelled, label_free))


def test_scales_divide_the_signals():
    coarse, fine = DriftDetector(0.4, 0.5), DriftDetector(0.1, 0.05)
    for det in (coarse, fine):
        det.update_reference(0.9, REF)
    shifted = [[0.7, 0.3], [0.25, 0.75]]
    a, b = coarse.score(0.7, shifted), fine.score(0.7, shifted)
    assert b.labelled == pytest.approx(4 * a.labelled) and b.label_free == pytest.approx(10 * a.label_free)


def test_update_reference_moves_the_baseline_and_ignores_nan():
    det = DriftDetector(0.1, 0.05)
    det.update_reference(0.9, REF)
    det.update_reference(float("nan"), [[0.6, 0.4], [0.25, 0.75]])
    assert det.reference_accuracy == 0.9  # nan did not overwrite it
    assert det.score(0.9, [[0.6, 0.4], [0.25, 0.75]]).label_free == 0.0
    assert det.score(0.9, REF).label_free == pytest.approx(1.0)


def test_combined_is_the_larger_signal():
    assert DriftScore(0.3, 1.2).combined == 1.2
    assert DriftScore(2.0, 0.1).combined == 2.0
    assert math.isclose(DriftScore(0.0, 0.0).combined, 0.0)
