"""Offline stage on the cloud: end-to-end training, sub-task/module assignment, target routing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from eclm.modules import (
    EpochMetrics,
    OfflineSettings,
    assign_modules,
    class_subtasks,
    evaluate,
    modularize,
    target_routing,
    train_offline,
)


def two_class_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose class is the sign of a fixed random pattern."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    pattern = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(99))
    sign = (2 * y - 1).float().view(-1, 1, 1, 1)
    return 0.8 * torch.randn(n, 3, 32, 32, generator=gen) + 0.5 * sign * pattern, y


def test_train_offline_reports_each_epoch_and_reduces_loss() -> None:
    model = modularize("resnet18", modules_per_layer=4, num_classes=2, channels=(16, 32, 64, 128))
    x, y = two_class_data(128, seed=0)
    val_x, val_y = two_class_data(64, seed=1)
    settings = OfflineSettings(epochs=2, enhance_epochs=1, batch_size=32, classes_per_subtask=1)
    heads_before = [h.weight.detach().clone() for h in model.selector.heads]

    history = train_offline(model, x, y, val_x, val_y, settings, progress=False)

    assert [(m.stage, m.epoch) for m in history] == [("modules", 0), ("modules", 1), ("enhance", 0)]
    assert all(isinstance(m, EpochMetrics) for m in history)
    assert history[1].loss < history[0].loss
    for m in history:
        assert np.isfinite([m.loss, m.ce, m.aux]).all() and m.aux >= 0
        assert 0.0 <= m.train_acc <= 1.0 and 0.0 <= m.val_acc_dense <= 1.0 and 0.0 <= m.val_acc_routed <= 1.0
    assert any(not torch.equal(h.weight, b) for h, b in zip(model.selector.heads, heads_before, strict=True))
    assert not model.training
    assert evaluate(model, val_x, val_y) == history[-1].val_acc_dense


def test_train_offline_rejects_mismatched_data() -> None:
    model = modularize("resnet18", modules_per_layer=2, num_classes=2, channels=(16, 32, 64, 128))
    x, y = two_class_data(8, seed=0)

    with pytest.raises(ValueError, match="matching lengths"):
        train_offline(model, x, y[:5], x, y, OfflineSettings(epochs=1, enhance_epochs=0), progress=False)


@pytest.mark.parametrize(
    "bad", [{"epochs": -1}, {"lr": 0.0}, {"min_active_fraction": 1.5}, {"kappa1": 0}, {"unknown_key": 1}]
)
def test_offline_settings_validate_fields(bad: dict) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        OfflineSettings(**bad)


def brute_force_assignment(load: np.ndarray, kappa1: int, kappa2: int) -> float | None:
    """Best ``sum(H * M)`` over every 0/1 mask satisfying the constraints (None if none does)."""
    t, n = load.shape
    best = None
    for bits in itertools.product((0, 1), repeat=t * n):
        mask = np.array(bits).reshape(t, n)
        rows, cols = mask.sum(1), mask.sum(0)
        if (rows >= 1).all() and (rows <= kappa2).all() and (cols <= kappa1).all():
            value = float((load * mask).sum())
            best = value if best is None else max(best, value)
    return best


ASSIGNMENT_TABLE = [
    # (sub-tasks T, modules N, kappa1, kappa2)
    (3, 3, 1, 1),
    (3, 3, 2, 2),
    (2, 4, 1, 3),
    (4, 2, 2, 1),
    (4, 3, 2, 2),
    (2, 3, 2, 3),
]


@pytest.mark.parametrize(("t", "n", "kappa1", "kappa2"), ASSIGNMENT_TABLE)
@pytest.mark.parametrize("seed", range(2))
def test_assignment_respects_capacities_and_matches_brute_force(
    t: int, n: int, kappa1: int, kappa2: int, seed: int
) -> None:
    load = np.random.default_rng(seed).dirichlet(np.ones(n), size=t)

    mask = assign_modules(load, kappa1, kappa2)

    assert mask.shape == (t, n) and set(np.unique(mask)) <= {0, 1}
    assert (mask.sum(axis=1) >= 1).all() and (mask.sum(axis=1) <= kappa2).all()
    assert (mask.sum(axis=0) <= kappa1).all()
    assert float((load * mask).sum()) == pytest.approx(brute_force_assignment(load, kappa1, kappa2), abs=1e-4)


@pytest.mark.parametrize(("t", "n", "kappa1"), [(5, 2, 2), (4, 1, 3), (7, 3, 2)])
def test_assignment_with_too_few_module_slots_is_rejected(t: int, n: int, kappa1: int) -> None:
    with pytest.raises(ValueError, match="sub-tasks cannot each get a module"):
        assign_modules(np.ones((t, n)), kappa1, 1)


@pytest.mark.parametrize(
    ("load", "kappa1", "kappa2", "match"),
    [
        (np.array([[0.5, -0.5]]), 1, 1, "non-negative"),
        (np.array([0.5, 0.5]), 1, 1, r"\(T, N\)"),
        (np.array([[0.5, np.nan]]), 1, 1, "finite"),
        (np.ones((2, 2)), 0, 1, "kappa1"),
        (np.ones((2, 2)), 1, 0, "kappa2"),
    ],
)
def test_assignment_rejects_bad_input(load: np.ndarray, kappa1: int, kappa2: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        assign_modules(load, kappa1, kappa2)


def test_target_routing_is_masked_row_distribution() -> None:
    load = np.array([[0.6, 0.3, 0.1], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3]])
    mask = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]])

    target = target_routing(load, mask)

    np.testing.assert_allclose(target.sum(axis=1), 1.0)
    assert (target[mask == 0] == 0).all()
    np.testing.assert_allclose(target[0], [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(target[1], [0.5, 0.5, 0.0])  # no load on the mask: uniform over it


@pytest.mark.parametrize(("classes", "per_task"), [(10, 2), (10, 3), (5, 5), (4, 1)])
def test_class_subtasks_partition_the_classes(classes: int, per_task: int) -> None:
    tasks = class_subtasks(classes, per_task)

    assert sorted(c for t in tasks for c in t) == list(range(classes))
    assert all(1 <= len(t) <= per_task for t in tasks)


@pytest.mark.parametrize("per_task", [0, 11])
def test_class_subtasks_reject_bad_size(per_task: int) -> None:
    with pytest.raises(ValueError, match="classes_per_task"):
        class_subtasks(10, per_task)
