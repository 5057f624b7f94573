"""Aggregation strategies on hand-made tensors, including robustness to one outlier."""

from __future__ import annotations

import pytest
import torch

from eclm.pipelines.aggregators import (
    Aggregator,
    CoordinateMedian,
    Krum,
    TrimmedMean,
    WeightedAverage,
    create_aggregator,
)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


@pytest.mark.parametrize(
    ("aggregator", "tensors", "weights", "expected"),
    [
        (WeightedAverage(), [_t(1.0, 2.0), _t(3.0, 6.0)], [0.25, 0.75], _t(2.5, 5.0)),
        (WeightedAverage(), [_t(1.0, -1.0), _t(3.0, 1.0), _t(5.0, 3.0)], [0.5, 0.25, 0.25], _t(2.5, 0.5)),
        (CoordinateMedian(), [_t(1.0, 9.0), _t(2.0, 8.0), _t(100.0, 7.0)], [0.1, 0.1, 0.8], _t(2.0, 8.0)),
        (CoordinateMedian(), [_t(1.0, 4.0), _t(3.0, 8.0)], [0.5, 0.5], _t(2.0, 6.0)),  # even: midpoint
        (TrimmedMean(0.2), [_t(v) for v in (1.0, 2.0, 3.0, 4.0, 100.0)], [0.2] * 5, _t(3.0)),
        (TrimmedMean(0.0), [_t(1.0), _t(2.0), _t(6.0)], [1 / 3] * 3, _t(3.0)),
        (TrimmedMean(0.34), [_t(1.0, 5.0), _t(2.0, -5.0), _t(9.0, 0.0)], [1 / 3] * 3, _t(2.0, 0.0)),
    ],
    ids=["weighted-2", "weighted-3", "median-odd", "median-even", "trimmed-0.2", "trimmed-0", "trimmed-per-coord"],
)
def test_aggregates_hand_made_tensors(aggregator, tensors, weights, expected):
    out = aggregator(tensors, weights)
    torch.testing.assert_close(out, expected)
    assert out.dtype == tensors[0].dtype and out.shape == tensors[0].shape


@pytest.mark.parametrize("aggregator", [WeightedAverage(), CoordinateMedian(), TrimmedMean(0.2)])
def test_a_single_contribution_comes_back_exactly_as_a_copy(aggregator):
    t = torch.randn(3, 4)
    out = aggregator([t], [1.0])
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()


@pytest.mark.parametrize(("aggregator", "robust"), [(CoordinateMedian(), True), (TrimmedMean(0.2), True),
                                                     (WeightedAverage(), False)])
def test_one_outlier_among_five(aggregator, robust):
    gen = torch.Generator().manual_seed(0)
    honest = [1.0 + 0.01 * torch.randn(4, 4, generator=gen) for _ in range(4)]
    outlier = torch.full((4, 4), 1e6)
    out = aggregator([*honest, outlier], [0.2] * 5)
    stacked = torch.stack(honest)
    inside = bool(((out >= stacked.min(0).values) & (out <= stacked.max(0).values)).all())
    assert inside is robust
    if not robust:
        assert float(out.min()) > 1e5  # the plain average is dragged to the outlier


def test_median_and_trimmed_mean_ignore_the_weights():
    tensors = [_t(1.0), _t(2.0), _t(3.0)]
    for agg in (CoordinateMedian(), TrimmedMean(0.34)):
        assert torch.equal(agg(tensors, [0.98, 0.01, 0.01]), agg(tensors, [0.01, 0.01, 0.98]))


def test_inputs_are_not_modified():
    tensors = [_t(1.0, 2.0), _t(3.0, 4.0), _t(5.0, 0.0)]
    copies = [t.clone() for t in tensors]
    for agg in (WeightedAverage(), CoordinateMedian(), TrimmedMean(0.34)):
        agg(tensors, [1 / 3] * 3)
    assert all(torch.equal(a, b) for a, b in zip(tensors, copies, strict=True))


@pytest.mark.parametrize(("name", "cls"), [("weighted", WeightedAverage), ("median", CoordinateMedian),
                                           ("trimmed_mean", TrimmedMean), ("krum", Krum), ("multi_krum", Krum)])
def test_factory_by_config_name(name, cls):
    agg = create_aggregator(name, trim_fraction=0.1)
    assert isinstance(agg, cls) and isinstance(agg, Aggregator) and agg.name == name
    if cls is TrimmedMean:
        assert agg.trim == 0.1


@pytest.mark.parametrize("trim", [-0.1, 0.5, 0.9])
def test_trimmed_mean_rejects_a_bad_fraction(trim):
    with pytest.raises(ValueError, match="trim must be in"):
        TrimmedMean(trim)


def test_factory_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="unknown aggregator 'mean'"):
        create_aggregator("mean")


def _cluster(honest: int, outliers: int, identical_outliers: bool = False) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    centre = torch.randn(40, generator=gen)
    good = [centre + 0.1 * torch.randn(40, generator=gen) for _ in range(honest)]
    far = torch.randn(40, generator=gen) * 5
    bad = [far.clone() if identical_outliers else far + torch.randn(40, generator=gen) for _ in range(outliers)]
    return bad + good  # outliers first: picking them by position would be the bug


@pytest.mark.parametrize("identical", [False, True], ids=["outliers", "colluding-identical-outliers"])
def test_krum_picks_a_contribution_of_the_honest_cluster(identical):
    tensors = _cluster(honest=5, outliers=2, identical_outliers=identical)
    krum = Krum(byzantine=2)
    assert krum.select(tensors)[0] >= 2
    out = krum(tensors, [1 / 7] * 7)
    assert any(torch.equal(out, t) for t in tensors[2:])


def test_multi_krum_averages_exactly_the_honest_cluster_with_their_weights():
    tensors = _cluster(honest=5, outliers=2)
    weights = [0.3, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05]
    out = Krum(byzantine=2, keep=None)(tensors, weights)  # keeps n - f = 5
    honest_w = torch.tensor(weights[2:]) / sum(weights[2:])
    torch.testing.assert_close(out, sum(w * t for w, t in zip(honest_w.tolist(), tensors[2:], strict=True)))


@pytest.mark.parametrize("n", [1, 2])
def test_krum_with_one_or_two_contributions_is_the_weighted_average(n):
    tensors = [torch.full((3,), float(i + 1)) for i in range(n)]
    torch.testing.assert_close(Krum()(tensors, [0.25, 0.75][:n] if n == 2 else [1.0]),
                               WeightedAverage()(tensors, [0.25, 0.75][:n] if n == 2 else [1.0]))


def test_krum_refuses_bad_settings():
    with pytest.raises(ValueError):
        Krum(byzantine=-1)
    with pytest.raises(ValueError):
        Krum(keep=0)
