"""The stable-rank statistic the robust screen uses to tell learned changes from noise."""

from __future__ import annotations

import math

import pytest
import torch

from eclm.pipelines.defences.spectrum import (
    noise_likeness,
    noise_stable_rank,
    relative_stable_rank,
    stable_rank,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_stable_rank_matches_its_definition_from_singular_values():
    a = torch.randn(6, 40, generator=_gen(), dtype=torch.float64)
    s = torch.linalg.svdvals(a)
    assert stable_rank(a) == pytest.approx(float((s**2).sum() / s[0] ** 2), rel=1e-9)
    assert stable_rank(a.T) == pytest.approx(stable_rank(a), rel=1e-9)  # either side's Gram gives it
    assert stable_rank(torch.zeros(3, 5)) is None


@pytest.mark.parametrize(("rows", "cols"), [(2, 18), (8, 72), (16, 144), (64, 576)])
def test_gaussian_noise_is_about_one_and_a_low_rank_change_far_below(rows, cols):
    noise = [relative_stable_rank(torch.randn(rows, cols, generator=_gen(s))) for s in range(1, 21)]
    assert 0.9 < sum(noise) / len(noise) < 1.1 and min(noise) > 0.7
    g = _gen(99)
    low = torch.randn(rows, 1, generator=g) @ torch.randn(1, cols, generator=g)  # rank one: stable rank exactly 1
    assert relative_stable_rank(low) == pytest.approx(1 / noise_stable_rank(rows, cols), rel=1e-6)
    assert relative_stable_rank(low) < 0.75


def test_the_noise_reference_is_the_same_in_every_call_and_grows_with_the_shape():
    noise_stable_rank.cache_clear()
    first = noise_stable_rank(8, 72)
    noise_stable_rank.cache_clear()
    assert noise_stable_rank(8, 72) == first
    assert noise_stable_rank(2, 18) < noise_stable_rank(8, 72) < noise_stable_rank(64, 576) <= 64
    assert noise_stable_rank(64, 576) == pytest.approx(64 * 576 / (8 + 24) ** 2, rel=0.1)  # Bai-Yin for large shapes


def test_what_carries_no_rank_information_is_left_out():
    assert relative_stable_rank(torch.randn(10)) is None
    assert relative_stable_rank(torch.randn(1, 10)) is None  # one row: a classifier row
    assert relative_stable_rank(torch.zeros(4, 4)) is None
    conv = torch.randn(8, 4, 3, 3, generator=_gen())
    assert relative_stable_rank(conv) == relative_stable_rank(conv.reshape(8, 36))
    assert noise_likeness([torch.randn(10), torch.zeros(3, 3)]) is None


def test_noise_likeness_is_the_median_over_units():
    g = _gen(5)
    noise = [torch.randn(8, 72, generator=g) for _ in range(3)]
    low = [torch.randn(8, 1, generator=g) @ torch.randn(1, 72, generator=g) for _ in range(2)]
    values = sorted(relative_stable_rank(m) for m in noise + low)
    assert noise_likeness(noise + low) == values[2]  # three noisy units out of five: the median is noise
    assert noise_likeness(noise[:1] + low) == values[1]
    two = [relative_stable_rank(m) for m in noise[:2]]
    assert math.isclose(noise_likeness(noise[:2]), sum(two) / 2)  # an even count: the mean of the middle two
