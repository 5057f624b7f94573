"""Local batch samplers: every sample once per epoch, GPSL batch mix, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from eclm.split import FixedEqualSampler, FixedProportionalSampler, GlobalSampler, LocalBatchSampler

SAMPLERS = [GlobalSampler, FixedProportionalSampler, FixedEqualSampler]
SIZE_TABLE = [
    ([10, 10, 10], 8),
    ([1, 50, 7, 120], 16),
    ([0, 33, 5], 4),
    ([100], 32),
    ([3, 4], 100),  # global batch larger than the pooled data: one step
]


@pytest.mark.parametrize("sampler_cls", SAMPLERS)
@pytest.mark.parametrize(("sizes", "batch"), SIZE_TABLE)
def test_every_sample_used_exactly_once_per_epoch(sampler_cls, sizes: list[int], batch: int) -> None:
    sampler: LocalBatchSampler = sampler_cls(sizes, batch, seed=3)

    plan = sampler.batch_sizes(epoch=2)
    steps = list(sampler.epoch_indices(epoch=2))

    assert plan.shape == (len(steps), len(sizes))
    assert (plan.sum(axis=0) == sizes).all()
    assert (plan.sum(axis=1) > 0).all()
    for k, n in enumerate(sizes):
        used = np.concatenate([step[k] for step in steps])
        assert sorted(used.tolist()) == list(range(n))
        assert [step[k].size for step in steps] == plan[:, k].tolist()


@pytest.mark.parametrize(("sizes", "batch"), SIZE_TABLE)
def test_global_sampler_batches_are_near_equal(sizes: list[int], batch: int) -> None:
    plan = GlobalSampler(sizes, batch, seed=0).batch_sizes()

    totals = plan.sum(axis=1)
    assert len(totals) == -(-sum(sizes) // batch)
    assert totals.max() - totals.min() <= 1
    assert totals.max() <= batch


@pytest.mark.parametrize(
    ("sampler_cls", "sizes", "batch", "local"),
    [
        (FixedProportionalSampler, [10, 30, 60], 10, [1, 3, 6]),
        (FixedProportionalSampler, [1, 999], 10, [1, 10]),  # min 1 for tiny clients
        (FixedEqualSampler, [10, 30, 60], 10, [3, 3, 3]),
        (FixedEqualSampler, [5, 5, 5, 5], 10, [3, 3, 3, 3]),  # 2.5 rounds half up
        (FixedEqualSampler, [5] * 20, 8, [1] * 20),
    ],
)
def test_fixed_samplers_local_batches_and_dropout(sampler_cls, sizes, batch, local) -> None:
    sampler = sampler_cls(sizes, batch)

    plan = sampler.batch_sizes()

    assert sampler.local_batches().tolist() == local
    # Full local batches until exhausted, at most one ragged batch, then zeros (dropped out).
    for k, b in enumerate(local):
        column = plan[:, k].tolist()
        full, rest = divmod(sizes[k], b)
        expected = [b] * full + ([rest] if rest else [])
        assert column == expected + [0] * (len(column) - len(expected))


def class_chi_square(sampler: LocalBatchSampler, client_class: np.ndarray, num_classes: int, epochs: int):
    """Mean per-step chi-square of the global batch's class counts against the pooled mix."""
    pooled = np.bincount(client_class, weights=sampler.client_sizes, minlength=num_classes)
    pooled = pooled / pooled.sum()
    stats = []
    for epoch in range(epochs):
        for row in sampler.batch_sizes(epoch):
            counts = np.bincount(client_class, weights=row, minlength=num_classes)
            expected = row.sum() * pooled
            stats.append(float(((counts - expected) ** 2 / expected).sum()))
    return float(np.mean(stats))


def test_global_batches_follow_the_pooled_class_mix_under_severe_skew() -> None:
    # One class per client, very unequal client sizes: the hardest case for local batching.
    sizes = [40, 80, 160, 320, 640, 40, 80, 160, 320, 640]
    client_class = np.arange(10) % 5
    num_classes, batch = 5, 64
    # Hypergeometric batches: E[chi2] = (C - 1) * (N - B) / (N - 1) < C - 1.
    expected = (num_classes - 1) * (sum(sizes) - batch) / (sum(sizes) - 1)

    gpsl = class_chi_square(GlobalSampler(sizes, batch, seed=1), client_class, num_classes, epochs=20)
    equal = class_chi_square(FixedEqualSampler(sizes, batch, seed=1), client_class, num_classes, epochs=1)

    assert gpsl == pytest.approx(expected, rel=0.15)
    assert equal > 3 * expected


def test_global_sampler_client_share_is_unbiased_per_step() -> None:
    sizes = np.array([5, 20, 75])
    sampler = GlobalSampler(sizes, 10, seed=7)

    shares = np.concatenate([sampler.batch_sizes(e) / 10 for e in range(200)])

    np.testing.assert_allclose(shares.mean(axis=0), sizes / sizes.sum(), atol=0.01)


@pytest.mark.parametrize("sampler_cls", SAMPLERS)
def test_sampling_is_deterministic_by_seed_and_varies_by_epoch(sampler_cls) -> None:
    def indices(seed: int, epoch: int) -> list[list[int]]:
        steps = sampler_cls([30, 50], 16, seed=seed).epoch_indices(epoch)
        return [np.concatenate(step).tolist() for step in steps]

    assert indices(5, 0) == indices(5, 0)
    assert indices(5, 0) != indices(5, 1)
    assert indices(5, 0) != indices(6, 0)


@pytest.mark.parametrize(
    ("sizes", "batch", "message"),
    [
        ([], 4, "client_sizes"),
        ([3, -1], 4, "client_sizes"),
        ([0, 0], 4, "at least one sample"),
        ([2.5, 3], 4, "client_sizes"),
        ([3, 3], 0, "global_batch"),
    ],
)
def test_sampler_rejects_bad_input(sizes, batch, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlobalSampler(sizes, batch)
