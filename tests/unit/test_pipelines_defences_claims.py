"""Bounds on what a device claims: each implausible claim is reported, honest claims pass."""

from __future__ import annotations

import math

import pytest
import torch

from eclm.modules import ModuleUpdate, SubModelSpec, modularize
from eclm.pipelines.defences.claims import ClaimBounds, check_claims


@pytest.fixture(scope="module")
def layers():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 16, 32, 64)).layers


def _update(layers, **changes) -> ModuleUpdate:
    u = ModuleUpdate("d", SubModelSpec(model_id="m", groups=[(0,)] * len(layers)), {},
                     [[0.7, 0.3] for _ in layers], 100, [1, 4, 7],
                     {"acc_after": 0.9, "forgetting": None, "environment": "contrast", "nested": {"x": [1.0, 2.0]}})
    for k, v in changes.items():
        setattr(u, k, v)
    return u


BOUNDS = ClaimBounds(max_samples=150, num_classes=10, importance_tolerance=0.01)


def _importance(layers, value):
    return [[value, 0.5] for _ in layers]


def test_honest_claims_pass(layers):
    assert check_claims(_update(layers), layers, BOUNDS, known_classes={1, 4, 7, 8}) == []


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("importance", -1e6, "importance outside [0, 1]"),
    ("importance", 1e9, "importance outside [0, 1]"),
    ("importance", math.nan, "importance summary is not finite"),
    ("importance", math.inf, "importance summary is not finite"),
    ("importance", None, "importance summary is not finite"),
    ("importance", 0.9, "sums to 1.4"),
    ("importance", "0.5", "importance summary is not finite"),
], ids=["-1e6", "1e9", "nan", "inf", "None-entry", "sum-1.4", "string-entry"])
def test_importance_entries(layers, field, value, reason):
    problems = check_claims(_update(layers, importance=_importance(layers, value)), layers, BOUNDS)
    assert len(problems) == 1 and reason in problems[0], problems


@pytest.mark.parametrize("importance", [None, "high", [[0.5, 0.5]], [[1.0] for _ in range(8)], [None] * 8],
                         ids=["None", "string", "one-row", "short-rows", "None-rows"])
def test_importance_shape(layers, importance):
    problems = check_claims(_update(layers, importance=importance), layers, BOUNDS)
    assert problems == ["importance summary has the wrong shape (one row of module importances per module layer)"]


def test_importance_rows_may_miss_one_within_tolerance(layers):
    assert check_claims(_update(layers, importance=[[0.7, 0.295] for _ in layers]), layers, BOUNDS) == []
    assert check_claims(_update(layers, importance=[[0.7, 0.28] for _ in layers]), layers, BOUNDS)


@pytest.mark.parametrize(("classes", "known", "reason"), [
    ([1, 4, 9], {1, 4, 7}, "claims classes [9] the device does not hold"),
    ([1, 1, 4], {1, 4, 7}, "classes listed twice"),
    ([1, 12], None, "classes outside 0..9"),
    ([-1], None, "classes outside 0..9"),
    ([1.0, 4.0], None, "classes must be a list of integers"),
    ("147", None, "classes must be a list of integers"),
    ([True], None, "classes must be a list of integers"),
    (None, {1, 4, 7}, "no classes claimed"),
])
def test_classes(layers, classes, known, reason):
    problems = check_claims(_update(layers, classes=classes), layers, BOUNDS, known_classes=known)
    assert len(problems) == 1 and reason in problems[0], problems


def test_a_subset_of_the_known_classes_and_unknown_devices_without_classes_pass(layers):
    assert check_claims(_update(layers, classes=[4]), layers, BOUNDS, known_classes={1, 4, 7}) == []
    assert check_claims(_update(layers, classes=None), layers, BOUNDS) == []


@pytest.mark.parametrize(("samples", "reason"), [
    (math.inf, "num_samples must be a finite number"),
    (math.nan, "num_samples must be a finite number"),
    (None, "num_samples must be a finite number"),
    ("100", "num_samples must be a finite number"),
    (True, "num_samples must be a finite number"),
    (12.5, "num_samples must be a whole number"),
    (0, "num_samples must be >= 1"),
    (-3, "num_samples must be >= 1"),
    (151, "exceeds the plausible maximum 150"),
    (10**12, "exceeds the plausible maximum 150"),
])
def test_sample_counts(layers, samples, reason):
    problems = check_claims(_update(layers, num_samples=samples), layers, BOUNDS)
    assert len(problems) == 1 and reason in problems[0], problems


def test_a_whole_float_sample_count_passes(layers):
    assert check_claims(_update(layers, num_samples=100.0), layers, BOUNDS) == []


@pytest.mark.parametrize(("metrics", "reason"), [
    ({"acc_after": math.nan}, "metrics.acc_after is not finite"),
    ({"loss": -math.inf}, "metrics.loss is not finite"),
    ({"per_class": [0.1, math.inf]}, "metrics.per_class[1] is not finite"),
    ({"deep": {"er": {"x": math.nan}}}, "metrics.deep.er.x is not finite"),
    ({"t": torch.tensor(1.0)}, "unsupported type Tensor"),
])
def test_metrics_must_be_finite(layers, metrics, reason):
    problems = check_claims(_update(layers, metrics=metrics), layers, BOUNDS)
    assert len(problems) == 1 and reason in problems[0], problems


def test_every_broken_claim_is_reported(layers):
    u = _update(layers, importance=_importance(layers, 1e9), classes=[99], num_samples=math.inf,
                metrics={"acc": math.nan})
    assert len(check_claims(u, layers, BOUNDS)) == 4
