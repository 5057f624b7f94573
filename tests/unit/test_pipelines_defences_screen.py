"""The robust screen on hand-made change vectors: each check fires for its attack, honest devices pass.

Honest changes share a common direction plus their own noise (devices that learn something in
common); the attacks are derived from one honest device's change. Units stand for merge units
(module slices); devices holding different modules are compared only where they overlap.
"""

from __future__ import annotations

import math

import pytest
import torch

from eclm.pipelines.defences.changes import Unit
from eclm.pipelines.defences.screen import RobustScreen, leave_one_out_median
from eclm.pipelines.mcnemar import SampleScores

UNITS = [Unit("shared.weight", None, "shared"), Unit("layer.conv", 0, "layer/m0"), Unit("layer.conv", 1, "layer/m1")]


def _round(devices: int = 5, signal: float = 1.0, noise: float = 0.5, seed: int = 0) -> dict[str, dict[Unit, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    common = {u: torch.randn(200, generator=gen) for u in UNITS}
    return {f"h{i}": {u: signal * common[u] + noise * torch.randn(200, generator=gen) for u in UNITS}
            for i in range(devices)}


def _attacked(change: dict[Unit, torch.Tensor], attack: str) -> dict[Unit, torch.Tensor]:
    if attack == "sign flip":
        return {u: -v for u, v in change.items()}
    if attack == "scaled x10":
        return {u: 10 * v for u, v in change.items()}
    if attack == "scaled x0.1":
        return {u: 0.1 * v for u, v in change.items()}
    gen = torch.Generator().manual_seed(7)  # random weights of the weights' scale: a faulty device
    return {u: 30 * torch.randn(v.shape, generator=gen) for u, v in change.items()}


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
def test_leave_one_out_median_is_the_median_of_the_others(k):
    x = torch.randn(k, 50, generator=torch.Generator().manual_seed(k))
    got = leave_one_out_median(x)
    for i in range(k):
        others = torch.cat([x[:i], x[i + 1 :]])
        ordered = others.sort(dim=0).values
        want = (ordered[(k - 2) // 2] + ordered[(k - 1) // 2]) / 2
        torch.testing.assert_close(got[i], want)


@pytest.mark.parametrize("k", [2, 3, 4, 7, 64, 65])
def test_leave_one_out_median_with_ties_is_exactly_the_median_of_the_others(k):
    """Updates often agree exactly (untouched coordinates, quantised values): with many ties the
    partial selection removes one copy of one's own value, bit for bit what a full sort gives."""
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(k, 40, generator=gen, dtype=torch.float64)
    x[:, :30] = torch.randint(-2, 3, (k, 30), generator=gen).double()  # three quarters of columns tied
    got = leave_one_out_median(x)
    for i in range(k):
        ordered = torch.cat([x[:i], x[i + 1 :]]).sort(dim=0).values
        assert torch.equal(got[i], (ordered[(k - 2) // 2] + ordered[(k - 1) // 2]) / 2)


def test_screen_verdicts_do_not_depend_on_the_number_of_workers():
    changes = _round(devices=9)
    changes["h0"] = _attacked(changes["h0"], "scaled x10")  # a boosted device: the others are compared again
    changes["h1"] = _attacked(changes["h1"], "sign flip")
    one, two = RobustScreen(workers=1)(changes), RobustScreen(workers=2)(changes)
    assert {d: v.to_dict() for d, v in one.items()} == {d: v.to_dict() for d, v in two.items()}
    assert not one["h0"].passed and not one["h1"].passed and one["h2"].compared_without == ["h0"]


def test_honest_devices_of_a_round_pass():
    verdicts = RobustScreen()(_round())
    assert all(v.passed for v in verdicts.values()), {d: v.reasons for d, v in verdicts.items()}
    assert all(v.compared_units == len(UNITS) and 0.5 < v.norm_ratio < 2 and v.centre_cosine > 0.5
               for v in verdicts.values())


@pytest.mark.parametrize(("attack", "reason"), [
    ("sign flip", "direction: cosine"),
    ("scaled x10", "norm"),
    ("scaled x0.1", "norm"),
    ("random weights", "norm"),
])
def test_each_attack_is_rejected_with_its_reason_and_the_honest_pass(attack, reason):
    changes = _round()
    changes["h0"] = _attacked(changes["h0"], attack)
    verdicts = RobustScreen()(changes)
    assert not verdicts["h0"].passed and any(r.startswith(reason) for r in verdicts["h0"].reasons), verdicts["h0"]
    assert all(verdicts[d].passed for d in changes if d != "h0"), {d: v.reasons for d, v in verdicts.items()}


def test_norm_reasons_name_the_ratio_and_the_allowed_band():
    changes = _round()
    changes["h0"] = _attacked(changes["h0"], "scaled x10")
    verdict = RobustScreen(norm_multiplier=4.0)(changes)["h0"]
    assert 8 < verdict.norm_ratio < 12
    assert "allowed 0.25..4" in verdict.reasons[0]


def test_colluding_identical_updates_are_all_rejected():
    changes = _round(devices=6)
    crafted = _attacked(changes["h0"], "sign flip")
    changes["h0"], changes["h1"] = crafted, {u: v.clone() for u, v in crafted.items()}
    verdicts = RobustScreen()(changes)
    assert verdicts["h0"].identical_to == ["h1"] and verdicts["h1"].identical_to == ["h0"]
    assert all("identical to the update of" in verdicts[d].reasons[0] for d in ("h0", "h1"))
    assert all(verdicts[d].passed for d in ("h2", "h3", "h4", "h5"))


def test_slightly_different_copies_count_as_identical_but_honest_neighbours_do_not():
    changes = _round(devices=4, noise=0.05)  # honest devices that agree closely (relative distance ~7%)
    changes["h3"] = {u: v * (1 + 1e-3) for u, v in changes["h0"].items()}  # a copy rescaled by 0.1 %
    verdicts = RobustScreen(duplicate_distance=0.01)(changes)
    assert verdicts["h3"].identical_to == ["h0"]
    assert verdicts["h1"].identical_to == [] and verdicts["h2"].identical_to == []


def test_a_device_is_compared_only_on_modules_others_hold_too():
    changes = _round(devices=4)
    lonely = Unit("layer.conv", 3, "layer/m3")
    changes["h0"][lonely] = 1e3 * torch.ones(200)  # nobody else holds module 3: no round to compare with
    verdict = RobustScreen()(changes)["h0"]
    assert verdict.compared_units == len(UNITS) and verdict.passed


@pytest.mark.parametrize("devices", [1, 2])
def test_small_rounds_skip_round_relative_checks_and_a_lone_honest_update_passes(devices):
    changes = _round(devices=devices)
    references = {d: {u: v + 0.5 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
                      for u, v in c.items()} for d, c in changes.items()}
    verdicts = RobustScreen()(changes, references)
    for v in verdicts.values():
        assert v.norm_ratio is None and v.centre_cosine is None and v.compared_units == 0
        assert v.trust_cosine > 0.5 and v.passed


def test_the_trust_check_rejects_an_update_against_the_cloud_reference_even_alone():
    changes = _round(devices=1)
    references = {"h0": {u: -v for u, v in changes["h0"].items()}}
    verdict = RobustScreen()(changes, references)["h0"]
    assert verdict.trust_cosine == pytest.approx(-1.0) and verdict.reasons[0].startswith("trust: cosine -1.000")


def test_the_head_is_trusted_separately_from_the_body():
    changes = _round(devices=1)
    head = Unit("fc.weight", 3, "head/class3")
    changes["h0"][head] = torch.ones(16)
    references = {"h0": {**changes["h0"], head: -torch.ones(16)}}  # body agrees, own class row opposite
    verdict = RobustScreen()(changes, references)["h0"]
    assert verdict.trust_cosine == pytest.approx(1.0) and verdict.head_trust_cosine == pytest.approx(-1.0)
    assert len(verdict.reasons) == 1 and "classifier rows of its classes" in verdict.reasons[0]


def test_a_zero_update_is_rejected_as_too_small():
    changes = _round()
    changes["h0"] = {u: torch.zeros_like(v) for u, v in changes["h0"].items()}
    verdict = RobustScreen()(changes)["h0"]
    assert verdict.norm_ratio == 0.0 and not verdict.passed


def test_units_nobody_changed_give_the_round_size_not_an_infinite_ratio():
    # e.g. modules behind a zero-initialised residual norm (timm's zero_init_last) before any
    # pretraining: no gradient reaches them, every device's change there is exactly zero
    changes = {d: {u: torch.zeros(200) for u in UNITS} for d in ("h0", "h1", "h2")}
    verdicts = RobustScreen(max_relative_stable_rank=None)(changes)
    assert all(v.norm_ratio == 1.0 and v.passed for v in verdicts.values()), {d: v.reasons for d, v in verdicts.items()}
    changes["h0"] = _round(devices=1)["h0"]  # one device changed what nobody else did: unbounded beside them
    assert RobustScreen()(changes)["h0"].norm_ratio == math.inf


@pytest.mark.parametrize("kwargs", [{"norm_multiplier": 1.0}, {"min_cohort": 2}, {"min_reference_norm_ratio": 0.0}])
def test_bad_thresholds_are_refused(kwargs):
    with pytest.raises(ValueError):
        RobustScreen(**kwargs)


def test_screen_refuses_no_workers():
    with pytest.raises(ValueError, match="workers"):
        RobustScreen(workers=0)


@pytest.mark.parametrize("holders", [3, 4, 5])
def test_a_boosted_update_among_few_holders_does_not_make_the_honest_ones_look_shrunken(holders):
    """With two others, the median of the others is the mean of an honest and a boosted change:
    the honest devices are compared again without the boosted one."""
    changes = _round(devices=holders - 1, noise=0.3)
    changes["x10"] = _attacked(changes["h0"], "scaled x10")
    verdicts = RobustScreen()(changes)
    assert not verdicts["x10"].passed and "norm" in verdicts["x10"].reasons[0]
    honest = [d for d in changes if d != "x10"]
    if holders - 1 >= 3:  # enough honest holders left for the round-relative checks
        assert all(verdicts[d].passed and 0.5 < verdicts[d].norm_ratio < 2 for d in honest), {
            d: verdicts[d].reasons for d in honest}
    else:  # two honest holders: nothing left to compare with, left to the trust check and validation
        assert all(verdicts[d].passed and verdicts[d].compared_units == 0 for d in honest)
    assert all(verdicts[d].compared_without == ["x10"] for d in honest) and verdicts["x10"].compared_without == []


def test_without_a_boosted_update_nobody_is_compared_again_and_a_shrunken_one_is_still_caught():
    changes = _round(devices=3, noise=0.3)
    changes["x0.1"] = _attacked(changes["h0"], "scaled x0.1")
    verdicts = RobustScreen()(changes)
    assert not verdicts["x0.1"].passed and "norm" in verdicts["x0.1"].reasons[0]
    assert all(v.compared_without == [] for v in verdicts.values())
    assert all(verdicts[d].passed for d in ("h0", "h1", "h2"))


def _references(changes: dict[str, dict[Unit, torch.Tensor]], scale: float) -> dict[str, dict[Unit, torch.Tensor]]:
    """The cloud's reference update of every device: its own change (same direction) times ``scale``."""
    return {d: {u: scale * v for u, v in c.items()} for d, c in changes.items()}


@pytest.mark.parametrize(("reference_scale", "rejected"), [
    (1.0, False),  # honest: as large as the cloud's own fine-tune of its sub-model on its classes
    (0.9, False),  # ratio 1/0.9 > 0.5
    (4.0, True),   # ratio 0.25 < 0.5: small beside the reference too
])
def test_a_small_change_is_rejected_only_if_it_is_also_small_beside_the_cloud_reference(reference_scale, rejected):
    """A device whose data its sub-model already fits moves less than the round's others: the
    cloud's reference fine-tune of the same sub-model on its classes tells it from a shrunken update."""
    changes = _round(noise=0.3)
    changes["h0"] = _attacked(changes["h0"], "scaled x0.1")
    references = _references(changes, 1.0)
    references["h0"] = {u: reference_scale * v for u, v in changes["h0"].items()}
    verdict = RobustScreen()(changes, references)["h0"]
    assert verdict.norm_ratio < 0.25
    assert verdict.reference_norm_ratio == pytest.approx(1 / reference_scale, rel=1e-4)
    assert verdict.passed is not rejected, verdict.reasons
    if rejected:
        assert verdict.reasons == [f"norm {verdict.norm_ratio:.3g} x the round's typical update on its units "
                                   "(allowed 0.25..4), and 0.25 x the cloud's reference update (allowed from 0.5)"]


def test_without_the_reference_bound_or_a_reference_the_round_decides_alone():
    changes = _round(noise=0.3)
    changes["h0"] = _attacked(changes["h0"], "scaled x0.1")
    references = _references(changes, 1.0)  # h0 as large as its reference: spared by the default
    assert RobustScreen()(changes, references)["h0"].passed
    assert not RobustScreen(min_reference_norm_ratio=None)(changes, references)["h0"].passed
    assert not RobustScreen()(changes, {d: r for d, r in references.items() if d != "h0"})["h0"].passed
    zero = references | {"h0": {u: torch.zeros_like(v) for u, v in changes["h0"].items()}}
    verdict = RobustScreen()(changes, zero)["h0"]  # a reference that did not move is no yardstick
    assert verdict.reference_norm_ratio is None and not verdict.passed


def test_a_large_change_is_rejected_whatever_the_reference():
    changes = _round(noise=0.3)
    changes["h0"] = _attacked(changes["h0"], "scaled x10")
    verdict = RobustScreen()(changes, _references(changes, 0.01))["h0"]
    assert verdict.norm_ratio > 4 and not verdict.passed and verdict.reasons[0].startswith("norm ")


def _scores(correct: list[int], p_true: list[float] | None = None) -> SampleScores:
    """Scores with the true class at probability 0.8 where right and 0.2 where wrong unless given;
    the samples alternate between classes 3 and 5."""
    mask = torch.tensor(correct, dtype=torch.bool)
    p = torch.tensor(p_true) if p_true is not None else torch.where(mask, 0.8, 0.2)
    return SampleScores(mask, p.log(), torch.tensor([3, 5] * (len(correct) // 2) + [3] * (len(correct) % 2)))


def _own(before: list[int], after: list[int]) -> tuple[SampleScores, SampleScores]:
    return _scores(before), _scores(after)


def test_an_update_that_ruins_its_own_classes_is_rejected_whatever_its_norm_and_direction():
    """A device trained on wrong labels: a normal change, but its own classes go from 80 % to 10 %."""
    changes = _round()
    own = {d: _own([1] * 32 + [0] * 8, [1] * 34 + [0] * 6) for d in changes}  # honest: a little better
    own["h0"] = _own([1] * 32 + [0] * 8, [1] * 4 + [0] * 36)
    verdicts = RobustScreen(max_own_loss_rise=None)(changes, None, own)  # the accuracy check alone
    assert verdicts["h0"].own_acc_before == pytest.approx(0.8) and verdicts["h0"].own_acc_after == pytest.approx(0.1)
    assert verdicts["h0"].own_samples == 40 and len(verdicts["h0"].reasons) == 1
    assert verdicts["h0"].reasons[0].startswith("behaviour: accuracy on its own classes 0.800 -> 0.100 on 40")
    assert all(verdicts[d].passed for d in changes if d != "h0")


@pytest.mark.parametrize(("before", "after", "why"), [
    ([1] * 4 + [0] * 2, [0] * 6, "a large drop on 6 samples is not significant"),
    ([1] * 30 + [0] * 10, [1] * 22 + [0] * 18, "a significant drop of 0.2 is within max_own_drop 0.3"),
])
def test_a_drop_must_be_both_large_and_significant(before, after, why):
    changes = _round()
    verdict = RobustScreen(max_own_loss_rise=None)(changes, None, {"h0": _own(before, after)})["h0"]
    assert verdict.passed, why


def test_a_device_whose_baseline_was_not_needed_passes_with_its_accuracy_after_recorded():
    verdict = RobustScreen()(_round(), None, {"h0": (None, _scores([1] * 40))})["h0"]
    assert verdict.passed and verdict.own_acc_before is None and verdict.own_acc_after == 1.0
    assert verdict.own_samples == 40


def test_the_behaviour_check_is_off_without_a_bound_and_without_samples():
    changes = _round()
    ruined = {"h0": _own([1] * 40, [0] * 40), "h1": _own([], [])}
    assert RobustScreen(max_own_drop=None, max_own_loss_rise=None)(changes, None, ruined)["h0"].passed
    assert not RobustScreen(max_own_drop=None)(changes, None, ruined)["h0"].passed  # the loss check alone
    verdict = RobustScreen()(changes, None, ruined)["h1"]
    assert verdict.passed and verdict.own_acc_before is None and verdict.own_samples == 0


def test_an_update_that_raises_the_loss_on_its_own_classes_is_rejected_though_no_prediction_flips():
    """A device trained on wrong labels whose change is too small to flip a prediction yet: every
    sample of its classes loses confidence in its true class (0.8 -> 0.6 where right, 0.4 -> 0.3 where not)."""
    changes = _round()
    right = [1] * 30 + [0] * 10
    own = {d: (_scores(right), _scores(right, [0.85] * 30 + [0.35] * 10)) for d in changes}  # honest: surer
    own["h0"] = (_scores(right, [0.8] * 30 + [0.4] * 10), _scores(right, [0.6] * 30 + [0.3] * 10))
    verdicts = RobustScreen(max_own_loss_rise=0.1)(changes, None, own)
    h0 = verdicts["h0"]
    assert h0.own_acc_before == h0.own_acc_after == 0.75
    assert h0.own_loss_after - h0.own_loss_before == pytest.approx(0.75 * math.log(0.8 / 0.6) + 0.25 * math.log(4 / 3))
    assert h0.own_loss_p == pytest.approx(0.5**40) and len(h0.reasons) == 1
    assert h0.reasons[0].startswith("own-class loss: among its own classes"), h0.reasons
    assert all(verdicts[d].passed and verdicts[d].own_loss_after < verdicts[d].own_loss_before
               for d in changes if d != "h0")
    assert RobustScreen(max_own_loss_rise=None)(changes, None, own)["h0"].passed  # the loss check off


def test_a_shift_between_its_classes_is_not_a_loss_rise_but_every_class_worse_is():
    """Three classes of 20 samples: a device whose data holds more of classes 3 and 5 makes class 7
    likelier and the others a little less (40 of 60 samples worse, sign test p = 0.007); permuted
    labels make every class worse."""
    labels = torch.tensor([3, 5, 7] * 20)
    right = torch.ones(60, dtype=torch.bool)

    def scores(p3: float, p5: float, p7: float) -> SampleScores:
        return SampleScores(right, torch.tensor([p3, p5, p7] * 20).log(), labels)

    shifted = {"h0": (scores(0.7, 0.7, 0.7), scores(0.5, 0.5, 0.95))}
    verdict = RobustScreen(max_own_loss_rise=0.05)(_round(), None, shifted)["h0"]
    assert verdict.own_loss_after > verdict.own_loss_before + 0.05 and verdict.own_loss_p < 0.01
    assert verdict.own_loss_least_class_rise < 0 and verdict.passed
    permuted = {"h0": (scores(0.7, 0.7, 0.7), scores(0.5, 0.5, 0.6))}
    verdict = RobustScreen(max_own_loss_rise=0.05)(_round(), None, permuted)["h0"]
    assert verdict.own_loss_least_class_rise == pytest.approx(math.log(0.7 / 0.6)) and not verdict.passed


@pytest.mark.parametrize(("before", "after", "why"), [
    ([0.8] * 4, [0.1] * 4, "a large rise on 4 samples is not significant (sign test p = 1/16)"),
    ([0.8] * 40, [0.75] * 40, "a significant rise of 0.065 nats is within 0.1"),
    ([0.8] * 30 + [0.5] * 10, [0.9] * 30 + [0.01] * 10, "a large mean rise from a quarter of the samples is not significant"),
])
def test_a_loss_rise_must_be_both_large_and_significant(before, after, why):
    right = [1] * len(before)
    own = {"h0": (_scores(right, before), _scores(right, after))}
    assert RobustScreen(max_own_loss_rise=0.1)(_round(), None, own)["h0"].passed, why


@pytest.mark.parametrize("kwargs", [{"max_own_drop": 1.5}, {"max_own_drop": -0.1}, {"own_alpha": 0.0},
                                    {"max_own_loss_rise": -0.01}])
def test_bad_behaviour_thresholds_are_refused(kwargs):
    with pytest.raises(ValueError):
        RobustScreen(**kwargs)
