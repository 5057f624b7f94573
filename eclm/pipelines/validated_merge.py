"""The validated module merge: integrity checks, robust aggregation, evaluation, accept/reject.

The paper merges whatever devices send. eclm refuses to regress silently:

1. Every update passes :func:`~eclm.pipelines.integrity.check_update` (tensors, and the bounds
   on what the device claims: :mod:`eclm.pipelines.defences.claims`) or is rejected with the
   reasons.
2. The robust screen (:mod:`eclm.pipelines.defences.screen`) compares the updates of the round
   with each other and with the cloud's reference updates, and rejects the ones that look
   poisoned (boosted or shrunken norms, wrong direction, identical copies).
3. The remaining updates are merged module-wise (``aggregator`` decides how contributions combine).
4. The candidate is evaluated on the cloud's held-out proxy set and, for every reporting device,
   its re-derived sub-model on the proxy samples of that device's classes, against the current
   model finalized the same way (without the cloud's own training step, ``plain_finalize``, when
   that step alone leaves the current model failing against the best accepted version).
5. If the candidate is worse (``acceptance="paired"``: McNemar's test on the same samples,
   :mod:`eclm.pipelines.mcnemar`; ``"threshold"``: it loses more than ``tolerance`` overall or
   ``device_tolerance`` on a device), shorter server steps are tried first (``server_lr`` halved
   up to ``step_backoff`` times: a backtracking line search towards the merged weights); if none
   passes, the harmful updates are isolated by group testing within a candidate budget
   (:mod:`eclm.pipelines.harm_search`: halves validated at the shortest step, the failing ones
   bisected) and excluded: *partial accept*. If nothing is cleared: *reject*.

Every decision lands in the :class:`MergeReport` with a reason per rejected device. An exception
while checking or screening one device's update rejects that device alone. The input state is
never modified; a rejected merge returns ``None`` and the caller keeps its model, which stays
bit-identical.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

from torch import Tensor

from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import ModuleUpdate, Weighting, is_norm_statistic, merge_module_updates
from eclm.modules.spec import SubModelSpec
from eclm.pipelines._merge_admission import MergeAdmissionMixin
from eclm.pipelines.aggregators import Aggregator, WeightedAverage
from eclm.pipelines.defences.claims import ClaimBounds
from eclm.pipelines.defences.screen import RobustScreen
from eclm.pipelines.harm_search import isolate_harmful, search_budget
from eclm.pipelines.mcnemar import SampleScores, compare_paired


@dataclass
class Evaluation:
    """Accuracy of a cloud state overall and per reporting device (on its classes).

    Attributes:
        overall: Accuracy on the proxy validation set.
        per_device: Accuracy of each device's sub-model on the proxy samples of its classes.
        correct: Per-sample correctness on the proxy validation set (enables the paired test).
        per_device_correct: The same per device (its samples, in a fixed order).
    """

    overall: float
    per_device: dict[str, float]
    correct: Tensor | None = None
    per_device_correct: dict[str, Tensor] = field(default_factory=dict)


Evaluator = Callable[[dict[str, Tensor], Sequence[ModuleUpdate]], Evaluation]
ReferenceUpdate = Callable[[ModuleUpdate], dict[str, Tensor]]
OwnScores = Callable[[dict[str, Tensor], ModuleUpdate], SampleScores]


@dataclass
class MergeReport:
    """What happened in one merge, with a reason for every decision."""

    decision: str  # "accept" | "partial" | "reject"
    reason: str
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    cloud_acc_before: float | None = None
    cloud_acc_after: float | None = None
    device_acc_before: dict[str, float] = field(default_factory=dict)
    device_acc_after: dict[str, float] = field(default_factory=dict)
    server_step: float | None = None
    screen: dict[str, dict] = field(default_factory=dict)
    paired: dict | None = None
    candidates: int = 0  # merged candidates validated (the baseline not counted)
    #: Why the merge finalized with ``plain_finalize`` instead of ``finalize`` (``None``: it did not).
    plain_finalize_reason: str | None = None
    #: The accepted candidate's evaluation (its per-sample correctness lets the caller keep it as
    #: the paired test's reference without evaluating the accepted model again); not serialised.
    evaluation: Evaluation | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "evaluation"}


@dataclass
class ValidatedMerge(MergeAdmissionMixin):
    """Configured merge pipeline (see module docstring).

    Attributes:
        evaluate: ``evaluate(state, updates) -> Evaluation`` (run on a copy of the model).
        aggregator: How contributions combine (weighted average, median, trimmed mean, Krum).
        weighting: Module weighting for the weighted average.
        max_relative_norm: Integrity bound on update norms.
        tolerance: Allowed drop of overall proxy accuracy.
        device_tolerance: Allowed drop on any reporting device's classes.
        min_updates: Minimum valid updates to merge at all.
        server_lr: Step towards the merged weights (1.0 = take them).
        step_backoff: How many times a failing candidate's step is halved before devices are
            excluded (0 = only ``server_lr``).
        merge_norm_statistics: Average BatchNorm running statistics too (else keep the cloud's).
        finalize: Optional ``finalize(state) -> state`` applied to every candidate before it is
            evaluated (the cloud recalibrates norm statistics on its proxy data here).
        plain_finalize: Optional ``finalize`` without the cloud's own training (its repair
            fine-tune), used for the whole merge instead of ``finalize`` when the current model
            finalized with ``finalize`` already fails the acceptance test against the best
            accepted version: that draw of the cloud's own step would fail every candidate, and
            the devices would be judged by it.
        max_samples: Upper bound on a device's claimed sample count (integrity).
        class_rows: Classifier tensors merged row by row over the devices holding each class.
        reference_accuracy: Best overall accuracy of any accepted version; the tolerance is
            measured from ``max(current, reference)`` so small accepted drops cannot accumulate
            (``acceptance="threshold"``).
        claims: Bounds on importance, classes, sample counts and metrics (``max_samples`` above
            applies when the bounds set none).
        known_classes: Per device, the classes the cloud knows it holds (claims must be a subset).
        screen: The robust screen run before aggregation (None: off).
        reference: ``reference(update) -> change`` computed by the cloud on its proxy data for
            the screen's trust check (None: no trust check).
        own_scores: ``own_scores(state, update) -> SampleScores``: per-sample correctness and
            true-class log-probability of the update's sub-model taken from ``state`` on the proxy
            samples of the device's classes under its environment, for the screen's behaviour
            checks (the cloud state against the cloud state with the update merged alone; None:
            no behaviour check).
        acceptance: ``"paired"`` (McNemar on the same samples; falls back to ``"threshold"``
            when the evaluator gives no per-sample correctness) or ``"threshold"``.
        alpha: Significance of the paired test overall; the per-device tests share another
            ``alpha`` (Bonferroni), so a neutral candidate fails with probability <= ``2 alpha``
            from the tests (plus what the ``max_drop`` guards add).
        max_drop: Paired acceptance: an observed overall drop beyond this rejects regardless.
        device_max_drop: The same for a device's classes.
        same_upload: Devices whose updates are one upload by design (the devices of a split
            round share the server's aggregated sub-model); the screen sees them as one device
            and applies its verdict to all of them.
        reference_correct: Per-sample correctness of the best accepted version on the proxy
            validation set; the paired test compares candidates with it (accumulated drops
            cannot pass), or with the current model when absent.
        search_budget: When the merge of all ``k`` updates fails at every server step, the group
            testing for the harmful ones validates at most ``ceil(search_budget x log2(k))``
            candidates (:mod:`eclm.pipelines.harm_search`); in all, a merge validates at most
            ``2 (step_backoff + 1) - 1`` plus that many candidates.
        workers: Threads the screen's per-update checks run on
            (:mod:`eclm.pipelines.merge_workers`; ``reference`` and ``own_scores`` must then be
            safe to call from several threads). Decisions do not depend on it.
        known_statistics: Per device, ``(statistics, update)`` computed earlier by
            :meth:`statistics_of` on the same cloud state (the cloud screens uploads as they
            arrive): for that very update object the merge skips the integrity and claim checks it
            passed and uses the statistics instead of computing them again.
    """

    evaluate: Evaluator
    aggregator: Aggregator = field(default_factory=WeightedAverage)
    weighting: Weighting = "importance_samples"
    max_relative_norm: float = 2.0
    tolerance: float = 0.02
    device_tolerance: float = 0.05
    min_updates: int = 1
    server_lr: float = 1.0
    step_backoff: int = 0
    merge_norm_statistics: bool = False
    finalize: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    plain_finalize: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    reference_accuracy: float | None = None
    class_rows: tuple[str, ...] = ()
    max_samples: int | None = None
    claims: ClaimBounds = field(default_factory=ClaimBounds)
    known_classes: Mapping[str, Collection[int]] | None = None
    screen: RobustScreen | None = None
    reference: ReferenceUpdate | None = None
    own_scores: OwnScores | None = None
    acceptance: Literal["paired", "threshold"] = "paired"
    alpha: float = 0.05
    max_drop: float | None = 0.03
    device_max_drop: float | None = 0.2
    reference_correct: Tensor | None = None
    same_upload: Collection[str] = ()
    search_budget: float = 4.0
    workers: int = 1
    known_statistics: Mapping[str, tuple[tuple, ModuleUpdate]] | None = None
    #: What this run finalizes with: ``finalize``, or ``plain_finalize`` (see :meth:`_baseline`).
    _finalize_now: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._finalize_now = self.finalize

    def run(
        self,
        cloud_state: dict[str, Tensor],
        layers: Sequence[ModuleLayer],
        updates: Sequence[ModuleUpdate],
        given_specs: dict[str, SubModelSpec],
        expected_names: Callable[[SubModelSpec], set[str]],
    ) -> tuple[dict[str, Tensor] | None, MergeReport]:
        """Validate and merge ``updates``.

        Args:
            cloud_state: Current cloud backbone state (not modified).
            layers: Module layer metadata.
            updates: Device uploads.
            given_specs: The spec each device was given this round.
            expected_names: Tensor names of a sub-model with a given spec.

        Returns:
            ``(new_state or None, report)``; ``None`` means keep the cloud model as it is.
        """
        valid, report = self.screened(cloud_state, layers, updates, given_specs, expected_names)
        return self.merge_screened(cloud_state, layers, valid, report)

    def screened(
        self,
        cloud_state: dict[str, Tensor],
        layers: Sequence[ModuleLayer],
        updates: Sequence[ModuleUpdate],
        given_specs: dict[str, SubModelSpec],
        expected_names: Callable[[SubModelSpec], set[str]],
    ) -> tuple[list[ModuleUpdate], MergeReport]:
        """The first half of :meth:`run`: the updates that pass the integrity and claim checks and
        the robust screen, and the report with every other update's reason.

        A host that lets only admitted updates shape the validation (the cloud validates on the
        environments its admitted devices report, see
        :class:`~eclm.pipelines.cloud_merge.CloudMergeMixin`) calls this, configures the second
        half from the result and calls :meth:`merge_screened`.
        """
        report = MergeReport(decision="reject", reason="")
        valid = self._admit(cloud_state, layers, updates, given_specs, expected_names, report)
        return self._screen(cloud_state, layers, valid, report), report

    def merge_screened(self, cloud_state: dict[str, Tensor], layers: Sequence[ModuleLayer],
                       valid: list[ModuleUpdate], report: MergeReport) -> tuple[dict[str, Tensor] | None, MergeReport]:
        """The second half of :meth:`run`: validate and merge updates that :meth:`screened` let through.

        Returns:
            ``(new_state or None, report)`` as :meth:`run`.
        """
        if len(valid) < self.min_updates:
            report.reason = f"{len(valid)} valid update(s), fewer than min_updates={self.min_updates}"
            return None, report

        before = self._baseline(cloud_state, valid, report)
        report.cloud_acc_before, report.device_acc_before = before.overall, before.per_device
        chosen = list(valid)
        passed, failure = self._first_passing(cloud_state, layers, chosen, before, report, self._steps())
        if passed is not None:
            return self._accept(report, before, chosen, *passed)
        if self.step_backoff:
            failure += f" even at server step {self._steps()[-1]:g}"
        if len(chosen) > 1:
            return self._search(cloud_state, layers, chosen, failure, before, report)
        report.rejected[chosen[0].device_id] = f"harmful: {failure}"
        report.reason = "no subset of the updates keeps the cloud model within tolerance"
        return None, report

    def _baseline(self, cloud_state: dict[str, Tensor], valid: list[ModuleUpdate], report: MergeReport) -> Evaluation:
        """The current model's evaluation, finalized as every candidate will be.

        The baseline goes through the same finalize step as every candidate, so the step's own
        effect (e.g. re-estimated norm statistics) is not counted against the devices. When that
        finalized baseline already fails against the best accepted version, the step would be
        counted against them after all (every candidate carries it): the merge then finalizes
        with ``plain_finalize``.
        """
        self._finalize_now = self.finalize
        before = self.evaluate(self._finalized(cloud_state), valid)
        # the acceptance rule itself, with the finalized baseline as the candidate: against the
        # best accepted version where there is one, else against itself (never a failure)
        failure = (self._failure(before, before, [], MergeReport(decision="reject", reason=""))
                   if self.plain_finalize is not None else None)
        if failure is None:
            return before
        report.plain_finalize_reason = f"the current model finalized fails against the best accepted version: {failure}"
        self._finalize_now = self.plain_finalize
        return self.evaluate(self._finalized(cloud_state), valid)

    def _finalized(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._finalize_now(state) if self._finalize_now is not None else state

    def _first_passing(self, cloud_state, layers, chosen, before: Evaluation, report: MergeReport, steps
                       ) -> tuple[tuple[dict[str, Tensor], Evaluation, float] | None, str]:
        """``((candidate, evaluation, step), "")`` for the first of ``steps`` whose candidate passes,
        else ``(None, the last failure)``."""
        failure = ""
        for step in steps:
            candidate = self._merge(cloud_state, layers, chosen, step)
            after = self.evaluate(candidate, chosen)
            report.candidates += 1
            failure = self._failure(before, after, chosen, report)
            if failure is None:
                return (candidate, after, step), ""
        return None, failure

    def _search(self, cloud_state, layers, chosen: list[ModuleUpdate], failure: str, before: Evaluation,
                report: MergeReport) -> tuple[dict[str, Tensor] | None, MergeReport]:
        """Group testing for the harmful updates (:mod:`eclm.pipelines.harm_search`) at the shortest
        server step within the candidate budget; the cleared set then tries the longer steps."""
        shortest = self._steps()[-1]

        def test(subset: list[ModuleUpdate]):
            candidate = self._merge(cloud_state, layers, subset, shortest)
            after = self.evaluate(candidate, subset)
            return self._failure(before, after, subset, report), (candidate, after, shortest)

        found = isolate_harmful(chosen, test, failure, search_budget(len(chosen), self.search_budget))
        report.candidates += found.candidates
        for i, why in found.harmful.items():
            report.rejected[chosen[i].device_id] = f"harmful: {why}; isolated by group testing"
        for i in found.unchecked:
            report.rejected[chosen[i].device_id] = (f"not cleared within the candidate budget (merge.search_budget "
                                                    f"{self.search_budget:g} x log2({len(chosen)}))")
        if not found.kept:
            report.reason = "no subset of the updates keeps the cloud model within tolerance"
            return None, report
        passed, _ = self._first_passing(cloud_state, layers, found.kept, before, report, self._steps()[:-1])
        if passed is None:  # the cleared set's own candidate; its paired test goes into the report again
            passed = found.payload
            self._failure(before, passed[1], found.kept, report)
        return self._accept(report, before, found.kept, *passed)

    def _accept(self, report: MergeReport, before: Evaluation, chosen, candidate: dict[str, Tensor],
                after: Evaluation, step: float) -> tuple[dict[str, Tensor], MergeReport]:
        report.cloud_acc_after, report.device_acc_after = after.overall, after.per_device
        report.evaluation = after
        report.accepted = [u.device_id for u in chosen]
        report.server_step = step
        partial = bool(report.rejected)
        report.decision = "partial" if partial else "accept"
        report.reason = (
            f"cloud proxy accuracy {before.overall:.4f} -> {after.overall:.4f} within tolerance"
            + (f" at server step {step:g}" if step != self.server_lr else "")
            + (f"; excluded {sorted(report.rejected)}" if partial else "")
        )
        return candidate, report

    def _steps(self) -> list[float]:
        """Server steps to try, longest first."""
        return [self.server_lr / 2**i for i in range(self.step_backoff + 1)]

    def _combine(self, cloud_state, layers, updates) -> dict[str, Tensor]:
        """``updates`` merged into ``cloud_state`` as the aggregator combines them (no step, no finalize)."""
        skip = None if self.merge_norm_statistics else is_norm_statistic
        return merge_module_updates(cloud_state, layers, updates, weighting=self.weighting, reducer=self.aggregator,
                                    skip=skip, class_rows=self.class_rows)

    def _merge(self, cloud_state, layers, updates, step: float | None = None) -> dict[str, Tensor]:
        merged = self._combine(cloud_state, layers, updates)
        step = self.server_lr if step is None else step
        if step != 1.0:
            merged = {
                k: (cloud_state[k] + step * (v - cloud_state[k])) if v is not cloud_state[k]
                and v.is_floating_point() else v
                for k, v in merged.items()
            }
        return self._finalized(merged)

    def _failure(self, before: Evaluation, after: Evaluation, chosen: Sequence[ModuleUpdate],
                 report: MergeReport) -> str | None:
        if self.acceptance == "paired" and before.correct is not None and after.correct is not None:
            return self._paired_failure(before, after, chosen, report)
        floor = max(before.overall, self.reference_accuracy or 0.0) - self.tolerance
        if after.overall < floor:
            return (f"cloud proxy accuracy {before.overall:.4f} -> {after.overall:.4f} "
                    f"(floor {floor:.4f}: best {max(before.overall, self.reference_accuracy or 0.0):.4f} "
                    f"- tolerance {self.tolerance})")
        for u in chosen:
            b, a = before.per_device.get(u.device_id), after.per_device.get(u.device_id)
            if b is not None and a is not None and a < b - self.device_tolerance:
                return f"device {u.device_id} accuracy {b:.4f} -> {a:.4f} (tolerance {self.device_tolerance})"
        return None

    def _paired_failure(self, before: Evaluation, after: Evaluation, chosen: Sequence[ModuleUpdate],
                        report: MergeReport) -> str | None:
        """McNemar's test overall (against the best version when known) at ``alpha`` and per
        device at ``alpha / devices`` (Bonferroni); the comparison lands in ``report.paired``."""
        pairs = [(u.device_id, before.per_device_correct.get(u.device_id), after.per_device_correct.get(u.device_id))
                 for u in chosen]
        pairs = [(d, b, a) for d, b, a in pairs if b is not None and a is not None and b.shape == a.shape]
        ref = self.reference_correct
        against = "best accepted version" if ref is not None and ref.shape == after.correct.shape else "current model"
        ref = ref if against == "best accepted version" else before.correct
        overall = compare_paired(ref, after.correct)
        report.paired = overall.to_dict() | {"against": against}
        failure = overall.failure(self.alpha, self.tolerance, self.max_drop)
        if failure:
            return f"cloud proxy accuracy {after.overall:.4f} vs {against}: {failure}"
        for d, b, a in pairs:
            failure = compare_paired(b, a).failure(self.alpha / len(pairs), self.device_tolerance, self.device_max_drop)
            if failure:
                return f"device {d} accuracy {before.per_device.get(d, float('nan')):.4f} -> {after.per_device.get(d, float('nan')):.4f}: {failure}"
        return None
