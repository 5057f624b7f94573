"""Cloud/device partition: disjointness, label skew, local sizes, cloud share, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eclm.data import DataSplit, DevicePool, LabelledImages, split_cloud_and_devices


def _dataset(per_class: int = 120, num_classes: int = 10) -> LabelledImages:
    generator = torch.Generator().manual_seed(0)
    count = per_class * num_classes
    images = torch.rand((count, 1, 4, 4), generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return LabelledImages(images, labels, num_classes, tuple(str(c) for c in range(num_classes)))


DATA = _dataset()


def _all_device_indices(split: DataSplit) -> tuple[set[int], set[int]]:
    train = set().union(*(set(p.train_indices.tolist()) for p in split.devices))
    test = set().union(*(set(p.test_indices.tolist()) for p in split.devices))
    return train, test


@pytest.mark.parametrize(
    "skew", [{"classes_per_device": 2}, {"classes_per_device": 5}, {"dirichlet_alpha": 0.5}]
)
def test_cloud_device_train_and_test_are_disjoint(skew: dict) -> None:
    split = split_cloud_and_devices(DATA, num_devices=12, samples_per_device=(20, 40), seed=1, **skew)

    cloud_train, cloud_val = set(split.cloud.train_indices.tolist()), set(split.cloud.val_indices.tolist())
    device_train, device_test = _all_device_indices(split)
    parts = [cloud_train, cloud_val, device_train, device_test]
    for i, first in enumerate(parts):
        for second in parts[i + 1 :]:
            assert not first & second
    assert len(split.cloud.train) == len(cloud_train) and len(split.cloud.val) == len(cloud_val)


@pytest.mark.parametrize("m", [1, 2, 5, 10])
def test_each_device_sees_exactly_m_classes(m: int) -> None:
    split = split_cloud_and_devices(
        DATA, num_devices=15, classes_per_device=m, samples_per_device=(10, 30), seed=3
    )

    labels = DATA.labels.numpy()
    for pool in split.devices:
        assert len(pool.classes) == m
        assert set(labels[pool.train_indices].tolist()) == set(pool.classes)
        assert set(labels[pool.test_indices].tolist()) == set(pool.classes)
        weights = np.asarray(pool.class_weights)
        assert weights.sum() == pytest.approx(1.0)
        assert set(np.flatnonzero(weights).tolist()) == set(pool.classes)


def test_classes_are_spread_evenly_over_devices() -> None:
    split = split_cloud_and_devices(
        DATA, num_devices=25, classes_per_device=2, samples_per_device=(10, 20), seed=0
    )

    uses = np.bincount([c for pool in split.devices for c in pool.classes], minlength=10)

    assert uses.sum() == 50 and uses.max() - uses.min() <= 2


@pytest.mark.parametrize(("low", "high"), [(50, 150), (30, 30), (1, 5)])
def test_local_sizes_respect_bounds(low: int, high: int) -> None:
    split = split_cloud_and_devices(
        DATA, num_devices=30, classes_per_device=2, samples_per_device=(low, high), seed=5
    )

    sizes = [pool.local_size for pool in split.devices]
    assert all(low <= size <= high for size in sizes)
    assert all(pool.local_size <= len(pool.train_indices) for pool in split.devices)
    if high - low >= 10:
        assert len(set(sizes)) > 1  # drawn, not constant


@pytest.mark.parametrize(("cloud_fraction", "cloud_val_fraction"), [(0.3, 0.2), (0.5, 0.0), (0.1, 0.5)])
def test_cloud_fraction_and_per_class_balance(cloud_fraction: float, cloud_val_fraction: float) -> None:
    split = split_cloud_and_devices(
        DATA,
        num_devices=3,
        classes_per_device=2,
        cloud_fraction=cloud_fraction,
        cloud_val_fraction=cloud_val_fraction,
        samples_per_device=(5, 10),
    )

    cloud_total = len(split.cloud.train) + len(split.cloud.val)
    assert cloud_total / len(DATA) == pytest.approx(cloud_fraction, abs=0.01)
    assert len(split.cloud.val) / cloud_total == pytest.approx(cloud_val_fraction, abs=0.02)
    per_class = split.cloud.train.class_counts() + split.cloud.val.class_counts()
    assert per_class.max() - per_class.min() <= 1  # stratified: every class equally represented


def test_dirichlet_skew_is_stronger_for_small_alpha() -> None:
    def mean_top_share(alpha: float) -> float:
        split = split_cloud_and_devices(
            DATA, num_devices=40, dirichlet_alpha=alpha, samples_per_device=(5, 10)
        )
        return float(np.mean([max(pool.class_weights) for pool in split.devices]))

    assert mean_top_share(0.1) > mean_top_share(100.0) + 0.3


def test_same_seed_same_split_other_seed_other_split() -> None:
    def fingerprint(seed: int) -> list:
        split = split_cloud_and_devices(DATA, num_devices=5, classes_per_device=2, seed=seed)
        return [split.cloud.train_indices.tolist()] + [pool.to_dict() for pool in split.devices]

    assert fingerprint(7) == fingerprint(7)
    assert fingerprint(7) != fingerprint(8)


def test_device_pool_dict_round_trip() -> None:
    pool = split_cloud_and_devices(DATA, num_devices=2, classes_per_device=3, seed=2).devices[1]

    restored = DevicePool.from_dict(pool.to_dict())

    assert restored.to_dict() == pool.to_dict()
    assert restored.train_indices.dtype == np.int64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes_per_device": 11}, "classes_per_device=11"),
        ({"classes_per_device": 2, "dirichlet_alpha": 1.0}, "exactly one"),
        ({}, "exactly one"),
        ({"classes_per_device": 2, "cloud_fraction": 1.0}, "cloud_fraction"),
        ({"classes_per_device": 2, "samples_per_device": (10, 5)}, "samples_per_device"),
        ({"classes_per_device": 1, "samples_per_device": (200, 300)}, "samples_per_device min is 200"),
        ({"dirichlet_alpha": -1.0}, "dirichlet_alpha"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        split_cloud_and_devices(DATA, num_devices=4, **kwargs)

    assert message in str(error.value)
