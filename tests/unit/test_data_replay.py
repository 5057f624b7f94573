"""Replay buffer (reservoir sampling, mixing) and the in-memory batch iterator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eclm.data import ReplayBuffer, batches, num_batches


def _items(start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(start, start + count)
    return ids.float().view(-1, 1, 1, 1), ids


@pytest.mark.parametrize(("capacity", "offered"), [(10, 3), (10, 10), (10, 57)])
def test_buffer_never_exceeds_capacity(capacity: int, offered: int) -> None:
    buffer = ReplayBuffer(capacity, seed=0)

    for start in range(0, offered, 4):
        buffer.add(*_items(start, min(4, offered - start)))

    assert len(buffer) == min(capacity, offered) and buffer.seen == offered
    images, labels = buffer.sample(100)
    assert len(labels) == len(buffer) and len(set(labels.tolist())) == len(buffer)  # distinct samples
    assert torch.equal(images.view(-1).long(), labels)  # pairs stay together


def test_reservoir_keeps_every_seen_item_with_equal_probability() -> None:
    capacity, offered, trials = 20, 200, 300
    inclusion = np.zeros(offered)
    for seed in range(trials):
        buffer = ReplayBuffer(capacity, seed=seed)
        for start in range(0, offered, 10):
            buffer.add(*_items(start, 10))
        inclusion[buffer.sample(capacity)[1].numpy()] += 1
    inclusion /= trials

    expected = capacity / offered
    # Loose statistical bounds: early and late items equally likely, no item far off.
    assert inclusion[:100].mean() == pytest.approx(expected, abs=0.015)
    assert inclusion[100:].mean() == pytest.approx(expected, abs=0.015)
    assert np.abs(inclusion - expected).max() < 0.09


def test_batch_add_equals_one_by_one_add() -> None:
    batched, single = ReplayBuffer(8, seed=4), ReplayBuffer(8, seed=4)

    batched.add(*_items(0, 50))
    for index in range(50):
        single.add(*_items(index, 1))

    assert torch.equal(batched.sample(8)[1].sort().values, single.sample(8)[1].sort().values)


@pytest.mark.parametrize(
    ("ratio", "batch", "stored", "appended"), [(0.5, 8, 30, 4), (1.0, 8, 3, 3), (0.0, 8, 30, 0)]
)
def test_mix_appends_replayed_samples(ratio: float, batch: int, stored: int, appended: int) -> None:
    buffer = ReplayBuffer(50, seed=1)
    buffer.add(*_items(100, stored))
    batch_x, batch_y = _items(0, batch)

    mixed_x, mixed_y = buffer.mix(batch_x, batch_y, ratio)

    assert mixed_x.shape[0] == mixed_y.shape[0] == batch + appended
    assert torch.equal(mixed_y[:batch], batch_y)
    assert all(label >= 100 for label in mixed_y[batch:].tolist())


def test_mix_with_empty_buffer_returns_the_batch() -> None:
    batch_x, batch_y = _items(0, 4)

    mixed_x, mixed_y = ReplayBuffer(5).mix(batch_x, batch_y, 1.0)

    assert torch.equal(mixed_x, batch_x) and torch.equal(mixed_y, batch_y)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ReplayBuffer(0), "capacity"),
        (lambda: ReplayBuffer(5).sample(1), "empty"),
        (lambda: ReplayBuffer(5).mix(*_items(0, 2), -1.0), "ratio"),
        (lambda: ReplayBuffer(5).add(torch.zeros(2, 1, 1, 1), torch.zeros(3, dtype=torch.int64)), "equal B"),
    ],
)
def test_replay_errors_are_clear(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("count", "batch_size", "drop_last"), [(10, 3, False), (10, 3, True), (9, 3, False), (2, 5, False)]
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_row_once(count: int, batch_size: int, drop_last: bool, shuffle: bool) -> None:
    x, y = _items(0, count)

    out = list(batches(x, y, batch_size, shuffle, torch.Generator().manual_seed(0), drop_last=drop_last))

    seen = torch.cat([batch_y for _, batch_y in out]).tolist()
    assert len(out) == num_batches(count, batch_size, drop_last=drop_last)
    assert all(len(batch_y) <= batch_size for _, batch_y in out)
    assert len(seen) == len(set(seen)) == (count - count % batch_size if drop_last else count)
    assert all(torch.equal(batch_x.view(-1).long(), batch_y) for batch_x, batch_y in out)
    if not shuffle:
        assert seen == list(range(len(seen)))


def test_shuffle_order_follows_the_generator() -> None:
    x, y = _items(0, 32)

    def order(seed: int) -> list[int]:
        return torch.cat([b for _, b in batches(x, y, 8, True, torch.Generator().manual_seed(seed))]).tolist()

    assert order(1) == order(1) and order(1) != order(2) and sorted(order(1)) == list(range(32))


@pytest.mark.parametrize(("batch_size", "rows_y", "message"), [(0, 4, "batch_size"), (2, 3, "same length")])
def test_batches_reject_bad_arguments(batch_size: int, rows_y: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        next(batches(torch.zeros(4, 1), torch.zeros(rows_y), batch_size))
