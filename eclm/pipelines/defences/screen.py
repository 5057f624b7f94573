"""The robust screen: which device updates of a round look like poison, before anything is merged.

Checks on the change each update makes (``uploaded - cloud``, cut into merge units by
:func:`~eclm.pipelines.defences.changes.unit_changes`), each comparing a device only with the
devices that hold the same unit (devices hold different modules), and one on what the update does
to the device's own classes. See docs/security.md for the measured error rates and what the
checks do not catch.

* **Norm bound relative to the round.** Per unit, the median change norm of the *other* holders
  is the round's typical size; over the device's units, ``ratio = ||own|| / ||typical||``.
  ``ratio > norm_multiplier`` (boosted, e.g. scaled x10) is rejected; so is ``ratio < 1 /
  norm_multiplier`` (a shrunken update that dilutes the average, e.g. scaled x0.1, or a free
  rider) when the update is also small beside the cloud's reference update (below): its body norm
  under ``min_reference_norm_ratio`` x the reference's on the same units. The round's other holders
  met other environments, trained other modules and may already fit their data, so an honest
  update of a device whose data its sub-model already fits sits below 1/4 of theirs; the reference
  is the same sub-model fine-tuned on the device's classes, a yardstick of its own (FLTrust measures
  every update's size against it). Without a reference the round-relative ratio decides alone.
  A boosted update inflates the typical size of every other holder of its units (with two others,
  the median of the others is the mean of the honest one and the boosted one), so honest devices
  would look shrunken beside it: the devices found boosted are left out, and the others are
  compared again without them (norm and direction), before any verdict.
* **Direction against the robust centre.** Per unit, the coordinate-wise median of the *other*
  holders' changes; the cosine between the device's change and those centres over its units must
  exceed ``min_centre_cosine``: updates aimed against the round (cosine near -1). Where honest
  devices agree a sign flip is caught here too; where their changes are nearly orthogonal, as
  with few samples per device, sign flips and noise sit near 0 and honest cosines reach -0.2 in
  5-device rounds (docs/security.md).
* **Trust against the cloud's reference update** (the FLTrust idea, Cao et al., NDSS 2021): the
  cosine with a change the cloud computed itself by briefly fine-tuning the same sub-model on
  proxy data of the device's classes must exceed ``min_trust_cosine`` over the body and
  ``min_head_trust_cosine`` over the classifier rows of the device's classes (a device trained
  on wrong labels pushes its own classes' rows the other way). This is the one check that needs
  no other device, so it is what protects a round with one or two updates.
* **Behaviour on its own classes** (error-rate based rejection, Fang et al., "Local Model
  Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020): the device's
  sub-model as uploaded against the cloud's sub-model, on the proxy validation samples of the
  device's classes under the environment it reports. An update that makes the device worse on its
  own classes by more than ``max_own_drop``, significantly (McNemar, ``own_alpha``), is rejected:
  a device trained on wrong labels has a normal norm and direction, and its classes' rows can
  still point near the cloud's reference, but it misclassifies its own classes.
* **Loss among its own classes** (loss-based rejection, same paper, made paired): on the same
  samples, the cross-entropy among the device's classes only (how well the sub-model tells them
  apart). An update that raises its mean by more than ``max_own_loss_rise`` nats, on
  significantly more samples than it lowers it (sign test, ``own_alpha``), and on every one of
  the device's classes, is rejected. A device trained in a corrupted environment on permuted
  labels still teaches the model that environment, which lowers the loss over all classes and can
  leave every prediction where it was; it does not teach it to tell its classes apart, which is
  what permuted labels undo. "Every class" spares an honest device whose data holds more of one
  class: its update makes that class likelier and the others less likely.
* **Noise-like updates** (:mod:`~eclm.pipelines.defences.spectrum`): over the device's module
  units, the median stable rank of its change relative to Gaussian noise of the same shapes. A
  change learned from data puts its energy in a few directions (honest updates measured 0.19-0.52);
  random noise spreads it over all of them (about 1). Above ``max_relative_stable_rank`` the
  update is rejected: a faulty or random device whose noise has a normal size and no direction
  passes the norm, direction and trust checks, and, being small, barely moves the validation.
* **Identical updates.** Two devices whose changes agree within ``duplicate_distance`` (relative
  distance over the units both hold) did not train on their own data: colluding or replayed
  updates. All of them are rejected (the original cannot be told from the copy).

Round-relative checks need at least ``min_cohort`` holders of a unit (the device and two others);
units with fewer holders are left to the trust check, the absolute integrity bound and the
validation. A single honest device therefore passes unless its direction disagrees with the
cloud's own reference. The screen assumes that honest devices are the majority among the holders
of every unit; a colluding majority defines the "typical" update.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from eclm.pipelines.defences.changes import Unit
from eclm.pipelines.defences.spectrum import noise_likeness
from eclm.pipelines.mcnemar import (
    LossComparison,
    PairedComparison,
    SampleScores,
    compare_losses,
    compare_paired,
)
from eclm.pipelines.merge_workers import parallel_map

Changes = dict[str, dict[Unit, Tensor]]


@dataclass
class DeviceScreen:
    """Statistics and verdict of one device (``None`` where a check had nothing to compare with).

    Attributes:
        norm_ratio: The device's change norm over the round's typical norm on the same units.
        reference_norm_ratio: The device's change norm over the cloud's reference update's on the
            same units (the body: every unit but the classifier rows).
        centre_cosine: Cosine with the coordinate-wise median of the other holders' changes.
        trust_cosine: Cosine with the cloud's reference update (the body: every unit but the
            classifier rows).
        head_trust_cosine: The same over the classifier rows of the device's classes.
        own_acc_before: Accuracy of the cloud's sub-model on the proxy samples of the device's
            classes (under its environment); ``None`` when not needed (the loss check is off and
            the accuracy after the update leaves no room for a drop beyond ``max_own_drop``).
        own_acc_after: The same with the device's update applied.
        own_samples: Samples of that comparison.
        own_loss_before: Mean cross-entropy (nats) of the cloud's sub-model on those samples, among
            the device's classes (``None`` when not measured).
        own_loss_after: The same with the device's update applied.
        own_loss_p: One-sided sign-test p-value of "the update raises the loss on them".
        own_loss_least_class_rise: The smallest over the device's classes of the mean rise of
            that loss on the class's samples (nats).
        relative_stable_rank: The median over the device's matrix units of its change's stable
            rank over Gaussian noise's of the same shape (about 1: noise-like).
        compared_units: Units with enough holders for the round-relative checks.
        compared_without: Boosted devices left out of the others this device was compared with.
        identical_to: Devices whose update equals this one's.
        reasons: Why the device is rejected (empty: it passes).
    """

    norm_ratio: float | None = None
    reference_norm_ratio: float | None = None
    centre_cosine: float | None = None
    trust_cosine: float | None = None
    head_trust_cosine: float | None = None
    own_acc_before: float | None = None
    own_acc_after: float | None = None
    own_samples: int = 0
    own_loss_before: float | None = None
    own_loss_after: float | None = None
    own_loss_p: float | None = None
    own_loss_least_class_rise: float | None = None
    relative_stable_rank: float | None = None
    compared_units: int = 0
    compared_without: list[str] = field(default_factory=list)
    identical_to: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}


@dataclass
class _Sums:
    own_sq: float = 0.0  # ||own change||^2 over compared units
    typical_sq: float = 0.0  # sum of (median norm of the others)^2
    centre_dot: float = 0.0
    centre_sq: float = 0.0
    units: int = 0


@dataclass
class RobustScreen:
    """The screen's thresholds (see module docstring; defaults in docs/security.md).

    Attributes:
        norm_multiplier: Allowed factor between a device's change norm and the round's typical one.
        min_reference_norm_ratio: A change below ``1 / norm_multiplier`` of the round's typical one
            is rejected only if its norm is also below this x the reference update's (``None``: the
            round-relative ratio decides alone).
        min_centre_cosine: Minimum cosine with the robust centre of the other holders.
        min_trust_cosine: Minimum cosine with the cloud's reference update (body).
        min_head_trust_cosine: Minimum cosine with it over the classifier rows of the device's classes.
        min_cohort: Holders a unit needs before round-relative checks apply (>= 3).
        duplicate_distance: Relative distance below which two devices' changes count as identical.
        max_own_drop: Largest accuracy drop on the device's own classes an update may cause
            (``None``: no behaviour check).
        own_alpha: Significance the drop must also reach (one-sided McNemar), and the loss rise
            (one-sided sign test).
        max_own_loss_rise: Largest rise of the mean cross-entropy (nats) among the device's own
            classes an update may cause; a larger rise is rejected when it is significant and the
            mean rises on every one of those classes (``None``: no loss check).
        max_relative_stable_rank: Largest median relative stable rank of an update's units
            (``None``: no noise check).
        workers: Threads the per-unit statistics are computed on (the verdicts do not depend on it).
    """

    norm_multiplier: float = 4.0
    min_reference_norm_ratio: float | None = 0.5
    min_centre_cosine: float = -0.3
    min_trust_cosine: float = -0.3
    min_head_trust_cosine: float = -0.5
    min_cohort: int = 3
    duplicate_distance: float = 1e-2
    max_own_drop: float | None = 0.3
    own_alpha: float = 0.05
    max_own_loss_rise: float | None = 0.05
    max_relative_stable_rank: float | None = 0.85
    workers: int = 1

    def __post_init__(self) -> None:
        if self.norm_multiplier <= 1 or self.min_cohort < 3:
            raise ValueError("norm_multiplier must be > 1 and min_cohort >= 3")
        if self.max_own_drop is not None and not 0 <= self.max_own_drop <= 1 or not 0 < self.own_alpha < 1:
            raise ValueError("max_own_drop must lie in [0, 1] (or be None) and own_alpha in (0, 1)")
        if self.max_own_loss_rise is not None and not self.max_own_loss_rise >= 0:
            raise ValueError("max_own_loss_rise must be >= 0 (or None)")
        if self.min_reference_norm_ratio is not None and not self.min_reference_norm_ratio > 0:
            raise ValueError("min_reference_norm_ratio must be > 0 (or None)")
        if self.max_relative_stable_rank is not None and not self.max_relative_stable_rank > 0:
            raise ValueError("max_relative_stable_rank must be > 0 (or None)")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    @property
    def checks_behaviour(self) -> bool:
        """Whether either behaviour check (accuracy or loss on the device's own classes) is on."""
        return self.max_own_drop is not None or self.max_own_loss_rise is not None

    def __call__(self, changes: Changes, references: Changes | None = None,
                 own: dict[str, tuple[SampleScores | None, SampleScores]] | None = None) -> dict[str, DeviceScreen]:
        """Screen one round.

        Args:
            changes: Per device, its change per unit.
            references: Per device, the cloud's reference change per unit (missing: no trust check).
            own: Per device, per-sample scores on the proxy samples of its classes of the cloud's
                sub-model (``None`` where the caller knew no check can fire) and of the same with
                the device's update (missing: no behaviour check).

        Returns:
            A :class:`DeviceScreen` per device of ``changes``.
        """
        devices = list(changes)
        out = {d: DeviceScreen() for d in devices}
        sums = {d: _Sums() for d in devices}
        holders: dict[Unit, list[str]] = defaultdict(list)
        for d in devices:
            for unit in changes[d]:
                holders[unit].append(d)
        dots = torch.zeros(len(devices), len(devices), dtype=torch.float64)
        common_sq = torch.zeros_like(dots)  # [a, b]: ||change of a||^2 over units b holds too
        index = {d: i for i, d in enumerate(devices)}
        cohorts: list[tuple[list[str], Tensor]] = []
        for unit, who in holders.items():
            x = torch.stack([changes[d][unit].reshape(-1) for d in who]).double()
            idx = torch.tensor([index[d] for d in who])
            gram = x @ x.T
            dots[idx[:, None], idx[None, :]] += gram
            common_sq[idx[:, None], idx[None, :]] += gram.diagonal()[:, None]
            if len(who) >= self.min_cohort:
                cohorts.append((who, x))
        self._compare_with_others(cohorts, sums)
        boosted = {d for d in devices if sums[d].typical_sq > 0
                   and sums[d].own_sq > self.norm_multiplier**2 * sums[d].typical_sq}
        if boosted:  # the others again, without the boosted updates that inflated their "typical" size
            sums |= {d: _Sums() for d in devices if d not in boosted}
            again = []
            for who, x in cohorts:
                keep = [i for i, d in enumerate(who) if d not in boosted]
                for i in keep:
                    out[who[i]].compared_without = sorted(set(out[who[i]].compared_without) | boosted.intersection(who))
                if len(keep) >= self.min_cohort:
                    again.append(([who[i] for i in keep], x[keep]))
            self._compare_with_others(again, sums)
        for d in devices:
            self._statistics(out[d], sums[d], changes[d], (references or {}).get(d), (own or {}).get(d))
        self._mark_identical(devices, dots, common_sq, out)
        for d in devices:
            self._verdict(out[d])
        return out

    def _statistics(self, out: DeviceScreen, s: _Sums, change: dict[Unit, Tensor], reference: dict[Unit, Tensor] | None,
                    own: tuple[SampleScores | None, SampleScores] | None) -> None:
        """One device's norm ratio, centre cosine, trust cosines and behaviour on its own classes."""
        out.compared_units = s.units
        if self.max_relative_stable_rank is not None:
            out.relative_stable_rank = noise_likeness(change.values())  # classifier rows (one row) carry no rank
        if s.units:
            # nothing changed on its units, as nothing did for the others: the round's size, not "inf x"
            out.norm_ratio = ((s.own_sq / s.typical_sq) ** 0.5 if s.typical_sq > 0
                              else float("inf") if s.own_sq > 0 else 1.0)
            out.centre_cosine = _cosine(s.centre_dot, s.own_sq, s.centre_sq)
        if reference is not None:
            out.trust_cosine, out.reference_norm_ratio = _against_reference(change, reference, head=False)
            out.head_trust_cosine, _ = _against_reference(change, reference, head=True)
        if own is not None and own[1].correct.numel():
            before, after = own
            out.own_samples, out.own_acc_after = int(after.correct.numel()), float(after.correct.float().mean())
            if before is not None:  # None: too accurate after the update for the check to fire
                out.own_acc_before = float(before.correct.float().mean())
                out.own_loss_before, out.own_loss_after = -float(before.true_logp.mean()), -float(after.true_logp.mean())
                losses = compare_losses(before.true_logp, after.true_logp, after.labels)
                out.own_loss_p, out.own_loss_least_class_rise = losses.p_worse, losses.least_class_rise
                self._check_behaviour(out, compare_paired(before.correct, after.correct), losses)

    def _compare_with_others(self, cohorts: list[tuple[list[str], Tensor]], sums: dict[str, _Sums]) -> None:
        """Add each unit's contribution (``(holders, their changes)`` per unit) to its holders'
        norm and centre statistics: computed per unit on ``workers`` threads, added in unit order
        (the same sums whatever the number of workers)."""
        for (who, _), stats in zip(cohorts, parallel_map(_unit_statistics, [x for _, x in cohorts], self.workers),
                                   strict=True):
            for d, (own_sq, typical_sq, centre_dot, centre_sq) in zip(who, stats.tolist(), strict=True):
                s = sums[d]
                s.own_sq += own_sq
                s.typical_sq += typical_sq
                s.centre_dot += centre_dot
                s.centre_sq += centre_sq
                s.units += 1

    def _mark_identical(self, devices: list[str], dots: Tensor, common_sq: Tensor, out: dict[str, DeviceScreen]) -> None:
        dist_sq = (common_sq + common_sq.T - 2 * dots).clamp_min(0)
        scale_sq = torch.maximum(common_sq, common_sq.T)
        same = (dist_sq <= self.duplicate_distance**2 * scale_sq) & (scale_sq > 0)
        same.fill_diagonal_(False)
        for i, d in enumerate(devices):
            out[d].identical_to = [devices[j] for j in same[i].nonzero().flatten().tolist()]

    def _check_behaviour(self, s: DeviceScreen, paired: PairedComparison, losses: LossComparison) -> None:
        if self.max_own_drop is not None and paired.drop > self.max_own_drop and paired.p_worse < self.own_alpha:
            s.reasons.append(f"behaviour: accuracy on its own classes {s.own_acc_before:.3f} -> {s.own_acc_after:.3f} "
                             f"on {paired.n} proxy samples (McNemar p={paired.p_worse:.3g}; allowed drop "
                             f"{self.max_own_drop:g})")
        rise = self.max_own_loss_rise
        if (rise is not None and losses.mean_rise > rise and losses.least_class_rise > 0
                and losses.p_worse < self.own_alpha):
            s.reasons.append(f"own-class loss: among its own classes {s.own_loss_before:.3f} -> {s.own_loss_after:.3f} "
                             f"nats (allowed rise {rise:g}), higher on {losses.rises} of {losses.n} proxy samples "
                             f"(sign test p={losses.p_worse:.3g}) and on every one of its classes (by "
                             f"{losses.least_class_rise:.3f} or more)")

    def _small_beside_reference(self, s: DeviceScreen) -> bool:
        """Whether a change small beside the round is small beside the cloud's reference too
        (true without a reference or without a bound: the round decides alone)."""
        bound = self.min_reference_norm_ratio
        return bound is None or s.reference_norm_ratio is None or s.reference_norm_ratio < bound

    def _verdict(self, s: DeviceScreen) -> None:
        m = self.norm_multiplier
        if s.identical_to:
            s.reasons.append(f"identical to the update of {s.identical_to} (colluding or replayed)")
        if s.norm_ratio is not None and not s.norm_ratio <= m:  # NaN too
            s.reasons.append(f"norm {s.norm_ratio:.3g} x the round's typical update on its units "
                             f"(allowed {1 / m:.3g}..{m:g})")
        elif s.norm_ratio is not None and s.norm_ratio < 1 / m and self._small_beside_reference(s):
            beside = "" if s.reference_norm_ratio is None or self.min_reference_norm_ratio is None else (
                f", and {s.reference_norm_ratio:.3g} x the cloud's reference update (allowed from "
                f"{self.min_reference_norm_ratio:g})")
            s.reasons.append(f"norm {s.norm_ratio:.3g} x the round's typical update on its units "
                             f"(allowed {1 / m:.3g}..{m:g}){beside}")
        if s.centre_cosine is not None and not s.centre_cosine > self.min_centre_cosine:
            s.reasons.append(f"direction: cosine {s.centre_cosine:.3f} with the median of the other devices "
                             f"(needs > {self.min_centre_cosine:g})")
        if s.trust_cosine is not None and not s.trust_cosine > self.min_trust_cosine:
            s.reasons.append(f"trust: cosine {s.trust_cosine:.3f} with the cloud's reference update "
                             f"(needs > {self.min_trust_cosine:g})")
        if s.head_trust_cosine is not None and not s.head_trust_cosine > self.min_head_trust_cosine:
            s.reasons.append(f"trust: cosine {s.head_trust_cosine:.3f} with the cloud's reference update on the "
                             f"classifier rows of its classes (needs > {self.min_head_trust_cosine:g})")
        limit = self.max_relative_stable_rank
        if limit is not None and s.relative_stable_rank is not None and s.relative_stable_rank > limit:
            s.reasons.append(f"noise-like: the median stable rank of its changes is {s.relative_stable_rank:.2f} x that "
                             f"of random noise of the same shapes (allowed {limit:g}; a change learned from data is "
                             "low-rank)")


def leave_one_out_median(x: Tensor) -> Tensor:
    """Row ``i``: the coordinate-wise median of all rows but ``i`` (mean of the two middle values
    for an even count). ``x`` is ``(k, n)`` with ``k >= 2`` and no NaN.

    The ``j``-th smallest of the others is the ``j``-th smallest of all (``v_j``) where ``v_j`` lies
    below one's own value, else ``v_(j+1)``; with ties this removes one copy of one's own value,
    which is all leaving it out means. So only the middle order statistics are needed (at most
    three per column: one partial selection, :func:`torch.topk`, serves every row), not a full sort.
    """
    k = x.shape[0]
    lo, hi = (k - 2) // 2, (k - 1) // 2  # middle positions among the k - 1 others
    smallest = torch.topk(x, hi + 2, dim=0, largest=False, sorted=True).values

    def others(j: int) -> Tensor:
        return torch.where(smallest[j] < x, smallest[j], smallest[j + 1])

    return (others(lo) + others(hi)) / 2


def _unit_statistics(x: Tensor) -> Tensor:
    """Per holder of one unit (rows of ``x``, their changes): ``[||own||^2, (median norm of the
    others)^2, own . centre, ||centre||^2]``, the centre being the others' coordinate-wise median."""
    norms = x.norm(dim=1)
    typical = leave_one_out_median(norms.unsqueeze(1)).squeeze(1)
    centres = leave_one_out_median(x)
    return torch.stack([norms**2, typical**2, (x * centres).sum(1), (centres * centres).sum(1)], dim=1)


def _cosine(dot: float, a_sq: float, b_sq: float) -> float:
    return dot / (a_sq * b_sq) ** 0.5 if a_sq > 0 and b_sq > 0 else 0.0


def _against_reference(change: dict[Unit, Tensor], reference: dict[Unit, Tensor], *,
           head: bool) -> tuple[float | None, float | None]:
    """Cosine of ``change`` with ``reference`` over the classifier-row units (``head``) or the
    others, and the ratio of their norms there (``None`` for a zero reference: no yardstick);
    ``(None, None)`` if there are no such units."""
    dot = own = ref = 0.0
    units = 0
    for unit, value in change.items():
        r = reference.get(unit)
        if r is None or r.shape != value.shape or unit.module.startswith("head/") != head:
            continue
        v, r = value.reshape(-1).double(), r.reshape(-1).double()
        dot += float(v @ r)
        own += float(v @ v)
        ref += float(r @ r)
        units += 1
    if not units:
        return None, None
    return _cosine(dot, own, ref), (own / ref) ** 0.5 if ref > 0 else None
