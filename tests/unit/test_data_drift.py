"""Drift schedules and device streams: timing of changes, share replaced, determinism, state round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eclm.data import (
    CORRUPTIONS,
    DataConfig,
    DevicePool,
    DeviceStream,
    DriftSchedule,
    Environment,
    LabelledImages,
    build_device_stream,
    build_split,
    split_cloud_and_devices,
)


def _dataset(per_class: int = 60, num_classes: int = 6) -> LabelledImages:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((per_class * num_classes, 3, 8, 8), generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return LabelledImages(images, labels, num_classes, tuple(f"c{c}" for c in range(num_classes)))


DATA = _dataset()
SPLIT = split_cloud_and_devices(
    DATA, num_devices=4, classes_per_device=4, samples_per_device=(40, 60), seed=0
)


def _stream(schedule: DriftSchedule | None = None, device: int = 0, **kwargs) -> DeviceStream:
    pool = SPLIT.devices[device]
    schedule = schedule or DriftSchedule(change_every=3, device_classes=pool.classes, seed=5)
    return DeviceStream(DATA, pool, schedule, **kwargs)


# ------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("change_every", [1, 3, 7])
def test_environment_changes_exactly_every_k_steps(change_every: int) -> None:
    schedule = DriftSchedule(change_every=change_every, seed=1)

    environments = [schedule.environment_at(step) for step in range(6 * change_every)]

    for step in range(1, len(environments)):
        changed = environments[step].corruption != environments[step - 1].corruption
        assert changed == (step % change_every == 0), step


def test_listed_order_cycles_through_the_list() -> None:
    names = ["contrast", "none", "pixelate"]
    schedule = DriftSchedule(names, order="listed", severity_range=(2, 4), change_every=2, seed=0)

    segments = [schedule.segment_environment(s) for s in range(7)]

    assert [env.corruption for env in segments] == [names[s % 3] for s in range(7)]
    assert all(2 <= env.severity <= 4 for env in segments)


@pytest.mark.parametrize("device_classes", [(1, 4), (0, 2, 3, 5, 7)])
def test_class_shift_picks_half_of_the_device_classes(device_classes: tuple[int, ...]) -> None:
    schedule = DriftSchedule(device_classes=device_classes, class_shift=True, seed=2)

    subsets = [schedule.segment_environment(s).classes for s in range(12)]

    assert all(subset is not None and set(subset) <= set(device_classes) for subset in subsets)
    assert all(len(subset) == math.ceil(len(device_classes) / 2) for subset in subsets)  # type: ignore[arg-type]
    assert len(set(subsets)) > 1


def test_schedule_is_a_function_of_its_seed() -> None:
    def run(seed: int) -> list[Environment]:
        schedule = DriftSchedule(change_every=2, seed=seed)
        # Ask out of order: segment k must not depend on the order of queries.
        return [schedule.environment_at(step) for step in (9, 0, 4, 2, 7)]

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corruptions": ["fog"]}, "fog"),
        ({"severity_range": (0, 3)}, "severity_range"),
        ({"change_every": 0}, "change_every"),
        ({"class_shift": True}, "device_classes"),
        ({"order": "shuffled"}, "order"),
    ],
)
def test_bad_schedule_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftSchedule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"corruption": "snow"}, "snow"), ({"severity": 9}, "severity"), ({"classes": ()}, "classes")],
)
def test_bad_environment_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Environment(**kwargs)


# ------------------------------------------------------------------------------------- stream
@pytest.mark.parametrize("replace_fraction", [0.5, 0.25, 1.0])
def test_each_step_replaces_the_configured_share(replace_fraction: float) -> None:
    stream = _stream(replace_fraction=replace_fraction)
    n = stream.local_size
    expected = max(1, round(replace_fraction * n))

    for _ in range(5):
        before = [index for index, _ in stream.local_entries()]
        stream.step()
        after = stream.local_entries()
        indices = [index for index, _ in after]

        assert len(after) == n and len(set(indices)) == n  # size kept, no duplicates
        assert sum(step == stream.step_index for _, step in after) == expected == stream.replace_count
        assert len(set(before) & set(indices)) == n - expected  # the newcomers are fresh images
        assert set(indices) <= set(SPLIT.devices[0].train_indices.tolist())


def test_fresh_samples_follow_the_environment_classes() -> None:
    base = SPLIT.devices[1]
    # A small local set, so each environment's classes always have enough fresh images (tier 1 only).
    pool = DevicePool(
        base.device_id, base.classes, base.class_weights, base.train_indices, base.test_indices, 12
    )
    environments = [Environment("none", 1, pool.classes[:1]), Environment("none", 1, pool.classes[2:])]
    stream = DeviceStream(DATA, pool, DriftSchedule.fixed(environments, change_every=2))
    labels = DATA.labels.numpy()

    for _ in range(6):
        stream.step()
        newest = [index for index, step in stream.local_entries() if step == stream.step_index]
        assert set(labels[newest].tolist()) <= set(stream.environment.classes)  # type: ignore[arg-type]


def test_train_images_carry_the_corruption_they_arrived_with() -> None:
    # inversion at severity 5 is exactly 1 - x, so corrupted images can be checked pixel by pixel.
    environments = [Environment("none", 1), Environment("inversion", 5)]
    stream = _stream(DriftSchedule.fixed(environments, change_every=1))
    stream.step()

    train = stream.train_set()

    for row, (index, step) in enumerate(stream.local_entries()):
        expected = DATA.images[index] if step == 0 else 1.0 - DATA.images[index]
        torch.testing.assert_close(train.images[row], expected)
        assert int(train.labels[row]) == int(DATA.labels[index])


def test_test_sets_follow_current_and_previous_environment() -> None:
    pool = SPLIT.devices[2]
    environments = [Environment("none", 1), Environment("inversion", 5, pool.classes[:2])]
    stream = _stream(DriftSchedule.fixed(environments, change_every=2), device=2)

    assert stream.previous_test_set() is None
    first = stream.test_set()
    torch.testing.assert_close(first.images, DATA.images[torch.as_tensor(pool.test_indices)])
    stream.step()
    assert torch.equal(stream.test_set().images, first.images)  # fixed within a segment
    stream.step()  # step 2: the second environment begins

    current, previous = stream.test_set(), stream.previous_test_set()
    assert previous is not None and torch.equal(previous.images, first.images)
    assert set(current.labels.tolist()) <= set(pool.classes[:2]) and len(current) > 0
    clean = DATA.subset(pool.test_indices[np.isin(DATA.labels.numpy()[pool.test_indices], pool.classes[:2])])
    torch.testing.assert_close(current.images, 1.0 - clean.images)


def test_test_size_caps_the_held_out_set() -> None:
    assert len(_stream(test_size=5).test_set()) == 5


def test_streams_with_equal_seeds_agree_and_other_seeds_differ() -> None:
    def run(seed: int) -> tuple[list, torch.Tensor]:
        stream = _stream(seed=seed)
        for _ in range(4):
            stream.step()
        return stream.local_entries(), stream.train_set().images

    entries_a, images_a = run(1)
    entries_b, images_b = run(1)
    entries_c, _ = run(2)

    assert entries_a == entries_b and torch.equal(images_a, images_b)
    assert entries_a != entries_c


def test_state_dict_recreates_the_stream_in_a_fresh_object() -> None:
    original = _stream(seed=3)
    for _ in range(4):
        original.step()
    state = json.loads(json.dumps(original.state_dict()))  # plain ints/lists only

    copy = _stream(seed=3)
    copy.load_state_dict(state)

    assert copy.step_index == original.step_index and copy.environment == original.environment
    assert torch.equal(copy.train_set().images, original.train_set().images)
    for _ in range(3):
        original.step()
        copy.step()
    assert copy.local_entries() == original.local_entries()
    assert torch.equal(copy.train_set().images, original.train_set().images)
    assert torch.equal(copy.test_set().images, original.test_set().images)


def test_state_of_another_device_is_rejected() -> None:
    state = _stream(device=1).state_dict()

    with pytest.raises(ValueError, match="device_id"):
        _stream(device=0).load_state_dict(state)


def test_scarce_environment_classes_are_topped_up_from_other_device_classes() -> None:
    pool = SPLIT.devices[1]
    only = pool.classes[:1]
    scarce = int(np.isin(DATA.labels.numpy()[pool.train_indices], only).sum())
    assert scarce < pool.local_size  # the environment's single class cannot fill the local set
    stream = DeviceStream(DATA, pool, DriftSchedule.fixed([Environment("none", 1, only)]))

    labels = stream.train_set().labels

    assert int(np.isin(labels.numpy(), only).sum()) == scarce  # every image of that class is used
    assert len(labels) == pool.local_size and set(labels.tolist()) <= set(pool.classes)


def test_scarce_pool_reuses_images_across_steps_but_never_within_a_set() -> None:
    base = SPLIT.devices[3]
    pool = DevicePool(
        base.device_id, base.classes, base.class_weights, base.train_indices[:30], base.test_indices, 30
    )
    stream = DeviceStream(DATA, pool, DriftSchedule(change_every=1, seed=0))

    for _ in range(3):
        stream.step()
        indices = [index for index, _ in stream.local_entries()]
        assert len(indices) == len(set(indices)) == 30
        assert sum(step == stream.step_index for _, step in stream.local_entries()) == 15


def test_build_device_stream_from_config_is_reproducible() -> None:
    cfg = DataConfig(num_devices=3, classes_per_device=3, samples_per_device=(20, 30))
    cfg = cfg.model_copy(
        update={"drift": cfg.drift.model_copy(update={"change_every": 2, "class_shift": True})}
    )
    split = build_split(DATA, cfg)

    streams = [build_device_stream(DATA, pool, cfg) for pool in split.devices]
    again = build_device_stream(DATA, split.devices[0], cfg)

    assert again.local_entries() == streams[0].local_entries()
    assert len({stream.schedule.seed for stream in streams}) == 3  # devices drift independently
    assert all(stream.environment.corruption in CORRUPTIONS for stream in streams)
