"""McNemar's paired test and the paired acceptance rule of the validated merge.

The p-value is checked against the closed form (binomial tail, summed exactly) and against
scipy's exact binomial test; the rule's false-reject bound is checked by exact enumeration.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom, binomtest

from eclm.modules import ModuleUpdate, SubModelSpec, modularize
from eclm.pipelines.mcnemar import (
    PairedComparison,
    compare_losses,
    compare_paired,
    correct_mask,
    mcnemar_p_worse,
    score_samples,
)
from eclm.pipelines.validated_merge import Evaluation, ValidatedMerge


@pytest.mark.parametrize(("worse", "better"), [(0, 0), (1, 0), (0, 1), (3, 3), (8, 2), (2, 8), (9, 2), (30, 12),
                                               (60, 40), (120, 80)])
def test_p_value_matches_the_closed_form_and_scipy(worse, better):
    n = worse + better
    closed = sum(math.comb(n, i) for i in range(worse, n + 1)) / 2**n if n else 1.0
    assert mcnemar_p_worse(worse, better) == pytest.approx(closed, rel=1e-12)
    if n:
        assert mcnemar_p_worse(worse, better) == pytest.approx(binomtest(worse, n, 0.5, alternative="greater").pvalue,
                                                               rel=1e-9)


def test_known_values():
    assert mcnemar_p_worse(8, 2) == pytest.approx(56 / 1024)  # C(10,8)+C(10,9)+C(10,10) = 45+10+1
    assert mcnemar_p_worse(5, 0) == pytest.approx(1 / 32)
    with pytest.raises(ValueError):
        mcnemar_p_worse(-1, 2)


def test_compare_paired_counts_the_disagreements():
    ref = torch.tensor([1, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    cand = torch.tensor([1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    c = compare_paired(ref, cand)
    assert (c.n, c.worse, c.better) == (7, 2, 1) and c.drop == pytest.approx(1 / 7)
    with pytest.raises(ValueError):
        compare_paired(ref, cand[:3])


@pytest.mark.parametrize(("comparison", "rejected"), [
    (PairedComparison(109, 1, 1), False),  # neutral
    (PairedComparison(109, 3, 0), False),  # 3 samples: p = 1/8, not evidence
    (PairedComparison(109, 12, 1), True),  # p = 0.0017 and a drop of 10 points
    (PairedComparison(20000, 400, 300), False),  # significant but within tolerance, measured precisely
    (PairedComparison(20000, 900, 300), True),  # significant and beyond tolerance
])
def test_the_rule_needs_significance_and_a_drop_not_shown_within_tolerance(comparison, rejected):
    assert (comparison.failure(alpha=0.05, tolerance=0.02) is not None) == rejected


def test_max_drop_rejects_a_large_drop_that_is_not_significant():
    c = PairedComparison(109, 14, 7)  # 6.4 points, p = 0.09: many disagreements both ways
    assert c.failure(0.05, 0.02) is None
    reason = c.failure(0.05, 0.02, max_drop=0.05)
    assert reason is not None and reason.startswith("drop 0.0642 > max_drop 0.05")


def _reject_probability(n: int, p_worse: float, p_better: float, alpha: float, tolerance: float,
                        max_drop: float | None = None) -> float:
    """Exact probability that the rule rejects, (worse, better, agree) ~ Multinomial(n; p_w, p_b, rest)."""
    total = 0.0
    for d in range(n + 1):
        p_d = binom.pmf(d, n, p_worse + p_better)
        share = p_worse / (p_worse + p_better)
        for w in range(d + 1):
            if PairedComparison(n, w, d - w).failure(alpha, tolerance, max_drop) is not None:
                total += p_d * binom.pmf(w, d, share)
    return total


@pytest.mark.parametrize("discordance", [0.02, 0.1, 0.3])
def test_a_neutral_candidate_is_rejected_at_most_alpha_of_the_time(discordance):
    assert _reject_probability(109, discordance / 2, discordance / 2, alpha=0.05, tolerance=0.02) <= 0.05


def test_a_ten_point_drop_is_found_on_109_samples_most_of_the_time():
    # 12 % of samples newly wrong, 2 % newly right: the kind of damage a poisoned merge does.
    # The test alone finds it 87 % of the time on 109 samples; the max_drop guard closes the gap.
    assert 0.8 < _reject_probability(109, 0.12, 0.02, alpha=0.05, tolerance=0.02) < 0.9
    assert _reject_probability(109, 0.12, 0.02, alpha=0.05, tolerance=0.02, max_drop=0.05) > 0.92


def test_correct_mask_is_per_sample_argmax_agreement():
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert correct_mask(model, x, torch.tensor([0, 0, 0])).tolist() == [True, False, True]



def test_score_samples_gives_the_negative_cross_entropy_of_the_true_class_and_argmax_correctness():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    scores = score_samples(model, x, y, batch_size=3)
    expected = -torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(scores.true_logp, expected.detach(), atol=1e-6)
    assert torch.equal(scores.correct, correct_mask(model, x, y))
    assert score_samples(model, x[:0], y[:0]).true_logp.numel() == 0



def test_among_given_classes_the_log_probability_ignores_every_other_class():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 5)
    x, y = torch.randn(6, 4), torch.tensor([3, 1, 3, 1, 1, 3])
    among = score_samples(model, x, y, classes=[3, 1])
    logits = model(x).detach()[:, [1, 3]]
    assert torch.allclose(among.true_logp, torch.log_softmax(logits, -1)[torch.arange(6), (y == 3).long()])
    assert torch.equal(among.correct, correct_mask(model, x, y))  # correctness stays the 5-way argmax
    with torch.no_grad():  # raising another class's logit changes the 5-way loss, not the one among {1, 3}
        model.bias[0] += 5.0
    assert torch.allclose(score_samples(model, x, y, classes=[1, 3]).true_logp, among.true_logp, atol=1e-6)
    assert score_samples(model, x, y).true_logp.max() < among.true_logp.min()
    with pytest.raises(ValueError):
        score_samples(model, x, y, classes=[3])

def test_the_loss_comparison_counts_rises_and_falls_and_is_a_sign_test():
    before = torch.log(torch.tensor([0.9, 0.8, 0.5, 0.5, 0.3]))
    after = torch.log(torch.tensor([0.1, 0.4, 0.5, 0.6, 0.2]))
    losses = compare_losses(before, after)
    assert (losses.n, losses.rises, losses.falls) == (5, 3, 1)  # one tie counts neither way
    assert losses.mean_rise == pytest.approx(float((before - after).mean()))
    assert losses.p_worse == mcnemar_p_worse(3, 1)
    assert compare_losses(after, before).mean_rise == pytest.approx(-losses.mean_rise)
    assert losses.class_rises is None and losses.least_class_rise == losses.mean_rise
    by_class = compare_losses(before, after, torch.tensor([1, 1, 2, 2, 2]))
    assert by_class.class_rises == pytest.approx({1: math.log(9) / 2 + math.log(2) / 2,
                                                  2: (math.log(0.5 / 0.6) + math.log(1.5)) / 3})
    assert by_class.least_class_rise == pytest.approx(by_class.class_rises[2])
    with pytest.raises(ValueError):
        compare_losses(before, after[:4])
    with pytest.raises(ValueError):
        compare_losses(before, after, torch.tensor([1, 2]))

# ------------------------------------------------------------ inside the validated merge
@pytest.fixture(scope="module")
def modular():
    return modularize("resnet18", modules_per_layer=2, num_classes=10, channels=(8, 16, 32, 64)).eval()


def _update(model, device: str) -> ModuleUpdate:
    spec = SubModelSpec(model_id=model.model_id, groups=[(0,)] * len(model.layers))
    state = {k: v + 0.01 if v.is_floating_point() else v.clone() for k, v in model.extract(spec).state_dict().items()}
    return ModuleUpdate(device, spec, state, [[0.5, 0.5] for _ in model.layers], 50)


def _paired_evaluator(cloud: dict, newly_wrong: int, newly_right: int, n: int = 109):
    """The current model gets the first 100 of ``n`` samples right; a candidate flips some."""
    base = torch.arange(n) < 100

    def run(state, updates) -> Evaluation:
        correct = base.clone()
        if not all(torch.equal(state[k], cloud[k]) for k in state):
            correct[:newly_wrong] = False
            correct[100 : 100 + newly_right] = True
        return Evaluation(float(correct.float().mean()), {}, correct)

    return run


@pytest.mark.parametrize(("wrong", "right", "decision"), [(3, 0, "accept"), (12, 1, "reject"), (4, 3, "accept")])
def test_validated_merge_decides_by_the_paired_test(modular, wrong, right, decision):
    cloud = {k: v.clone() for k, v in modular.backbone.state_dict().items()}
    u = _update(modular, "a")
    run = _paired_evaluator(cloud, wrong, right)
    state, report = ValidatedMerge(evaluate=run, tolerance=0.02).run(
        cloud, modular.layers, [u], {"a": u.spec}, lambda s: set(modular.extract(s).state_dict()))
    assert report.decision == decision
    assert report.paired["worse"] == wrong and report.paired["better"] == right
    if decision == "reject":
        assert "significantly worse" in report.rejected["a"] and state is None
    # The threshold rule decides a 3-sample drop (2.8 points) against a 2-point tolerance by noise:
    threshold = ValidatedMerge(evaluate=run, tolerance=0.02, acceptance="threshold").run(
        cloud, modular.layers, [u], {"a": u.spec}, lambda s: set(modular.extract(s).state_dict()))[1]
    assert threshold.decision == ("accept" if wrong - right <= 2 else "reject")
