"""Paired acceptance of a merged candidate: McNemar's test on the same validation samples.

Comparing two accuracies measured on the same ~100 samples decides by noise: one sample is
~0.9 points against a 2-point tolerance. Both models are evaluated on *the same* samples, so the
information is in the samples on which they disagree (McNemar, Psychometrika 12, 1947):

* ``worse`` = samples the reference model gets right and the candidate wrong,
* ``better`` = samples the reference gets wrong and the candidate right.

Under "the candidate is no worse", each disagreement is a fair coin, so the one-sided exact
p-value is ``P[Binomial(worse + better, 1/2) >= worse]``. The candidate is rejected when

1. it is significantly worse, ``p < alpha``, **and** the drop is not shown to be within
   tolerance: the one-sided ``1 - alpha`` upper confidence bound of the accuracy drop,
   ``(worse - better) / n + z * se`` with the paired standard error
   ``se = sqrt(worse + better - (worse - better)^2 / n) / n``, exceeds ``tolerance``; **or**
2. the observed drop exceeds ``max_drop`` (a guard for small sets, where a large drop can fail
   to be significant because the models disagree on many samples).

Rule 1 alone rejects a neutral candidate with probability at most ``alpha`` whatever the set
size, and with a large validation set accepts a real but small drop within tolerance; its price
on a small set is power. docs/security.md gives the false-accept / false-reject rates of both
rules together for the digits proxy split.

The same binomial is a sign test on per-sample losses (:class:`LossComparison`), which the robust
screen uses to compare a device's update with the cloud on the device's own classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class PairedComparison:
    """A candidate against a reference model on the same samples.

    Attributes:
        n: Paired samples.
        worse: Samples the reference gets right and the candidate wrong.
        better: Samples the reference gets wrong and the candidate right.
    """

    n: int
    worse: int
    better: int

    @property
    def drop(self) -> float:
        """Accuracy of the reference minus that of the candidate."""
        return (self.worse - self.better) / self.n if self.n else 0.0

    @property
    def p_worse(self) -> float:
        """One-sided exact McNemar p-value of "the candidate is worse"."""
        return mcnemar_p_worse(self.worse, self.better)

    def drop_upper(self, alpha: float) -> float:
        """One-sided ``1 - alpha`` upper confidence bound of :attr:`drop` (normal, paired se)."""
        if not self.n:
            return 0.0
        d = self.worse + self.better
        se = math.sqrt(max(d - (self.worse - self.better) ** 2 / self.n, 0.0)) / self.n
        return self.drop + NormalDist().inv_cdf(1 - alpha) * se

    def failure(self, alpha: float, tolerance: float, max_drop: float | None = None) -> str | None:
        """Why the candidate is rejected (see module docstring), or ``None`` if it is accepted."""
        p = self.p_worse
        upper = self.drop_upper(alpha)
        counts = f"{self.worse} newly wrong vs {self.better} newly right of {self.n} paired samples"
        if p < alpha and upper > tolerance:
            return (f"significantly worse ({counts}, McNemar p={p:.3g} < {alpha:.3g}), drop {self.drop:.4f} "
                    f"(upper bound {upper:.4f} > tolerance {tolerance})")
        if max_drop is not None and self.drop > max_drop:
            return f"drop {self.drop:.4f} > max_drop {max_drop} ({counts}, McNemar p={p:.3g})"
        return None

    def to_dict(self) -> dict:
        return {"n": self.n, "worse": self.worse, "better": self.better, "drop": self.drop, "p_worse": self.p_worse}


def mcnemar_p_worse(worse: int, better: int) -> float:
    """``P[Binomial(worse + better, 1/2) >= worse]``: exact one-sided McNemar p-value.

    Args:
        worse: Discordant pairs against the candidate.
        better: Discordant pairs in its favour.

    Raises:
        ValueError: On negative counts.
    """
    if worse < 0 or better < 0:
        raise ValueError(f"counts must be non-negative, got {worse} and {better}")
    n = worse + better
    if n == 0:
        return 1.0
    # exact integer arithmetic: sum of binomial coefficients over 2^n (true division of ints)
    return sum(math.comb(n, i) for i in range(worse, n + 1)) / 2**n


def compare_paired(reference_correct: Tensor, candidate_correct: Tensor) -> PairedComparison:
    """Count the disagreements of two per-sample correctness vectors (same samples, same order).

    Raises:
        ValueError: If the vectors differ in length.
    """
    if reference_correct.shape != candidate_correct.shape:
        raise ValueError(f"paired vectors differ: {tuple(reference_correct.shape)} vs {tuple(candidate_correct.shape)}")
    ref, cand = reference_correct.bool(), candidate_correct.bool()
    return PairedComparison(n=int(ref.numel()), worse=int((ref & ~cand).sum()), better=int((~ref & cand).sum()))


class SampleScores(NamedTuple):
    """One model on labelled samples, per sample: whether it is right (argmax over every class), its
    log-probability of the true class (the negative of the cross-entropy loss; among a given set of
    classes when :func:`score_samples` was given one), and the label."""

    correct: Tensor
    true_logp: Tensor
    labels: Tensor


@dataclass(frozen=True)
class LossComparison:
    """A candidate against a reference model by their per-sample losses on the same samples.

    Accuracy moves only where a prediction flips; the loss moves on every sample. The sign test
    counts the samples whose loss rose against those whose loss fell: under "the candidate is no
    worse" each is a fair coin, the same binomial as McNemar's test (the loss-based rejection of
    Fang et al., USENIX Security 2020, made paired). The mean rise is also kept per class: a shift
    of the class priors (a device whose data holds more of one class) lowers the loss of some
    classes and raises it for others, where labels permuted among the classes raise it for every one.

    Attributes:
        n: Paired samples.
        rises: Samples whose loss is higher under the candidate.
        falls: Samples whose loss is lower under it.
        mean_rise: Mean of ``loss(candidate) - loss(reference)`` over the samples (nats).
        class_rises: The same mean per class (``None`` when no labels were given).
    """

    n: int
    rises: int
    falls: int
    mean_rise: float
    class_rises: dict[int, float] | None = None

    @property
    def least_class_rise(self) -> float:
        """The smallest per-class mean rise (:attr:`mean_rise` without labels; 0 without samples)."""
        return min(self.class_rises.values()) if self.class_rises else self.mean_rise

    @property
    def p_worse(self) -> float:
        """One-sided exact sign-test p-value of "the candidate's loss is higher"."""
        return mcnemar_p_worse(self.rises, self.falls)


def compare_losses(reference: Tensor, candidate: Tensor, labels: Tensor | None = None) -> LossComparison:
    """Compare per-sample true-class log-probabilities of two models (same samples, same order).

    Args:
        reference: The reference model's log-probabilities.
        candidate: The candidate's.
        labels: The samples' labels, for the per-class means.

    Raises:
        ValueError: If the vectors differ in length.
    """
    if reference.shape != candidate.shape or labels is not None and labels.shape != reference.shape:
        raise ValueError(f"paired vectors differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}"
                         + ("" if labels is None else f" (labels {tuple(labels.shape)})"))
    rise = (reference - candidate).double()  # loss = -log p(true class)
    per_class = None if labels is None else {int(c): float(rise[labels == c].mean()) for c in labels.unique()}
    return LossComparison(n=int(rise.numel()), rises=int((rise > 0).sum()), falls=int((rise < 0).sum()),
                          mean_rise=float(rise.mean()) if rise.numel() else 0.0, class_rises=per_class)


@torch.no_grad()
def score_samples(model: torch.nn.Module, x: Tensor, y: Tensor, batch_size: int = 256,
                  classes: Sequence[int] | None = None) -> SampleScores:
    """Per-sample correctness ``(N,)`` bool and true-class log-probability ``(N,)`` of ``model`` in eval mode.

    Args:
        model: The classifier.
        x: Inputs.
        y: Labels.
        batch_size: Samples per forward pass.
        classes: If given (every label must be one of them), the log-probability is taken over
            these classes' logits only: how well the model tells them apart, whatever it thinks of
            the others.
    """
    if not len(x):
        return SampleScores(torch.zeros(0, dtype=torch.bool), torch.zeros(0), y[:0])
    among = torch.tensor(sorted(set(classes))) if classes else None
    if among is not None and not bool(torch.isin(y, among).all()):
        raise ValueError("every label must be one of the given classes")
    was = model.training
    model.eval()
    correct, logp = [], []
    for i in range(0, len(x), batch_size):
        out, target = model(x[i : i + batch_size]).float(), y[i : i + batch_size]
        correct.append(out.argmax(-1) == target)
        if among is not None:
            out, target = out[:, among], torch.searchsorted(among, target)
        logp.append(torch.log_softmax(out, -1).gather(1, target.unsqueeze(1)).squeeze(1))
    model.train(was)
    return SampleScores(torch.cat(correct), torch.cat(logp), y)


def correct_mask(model: torch.nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> Tensor:
    """Per-sample correctness ``(N,)`` bool of ``model`` in eval mode."""
    return score_samples(model, x, y, batch_size).correct
