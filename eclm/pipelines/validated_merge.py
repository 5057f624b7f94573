"""The validated module merge: integrity checks, robust aggregation, evaluation, accept/reject.

The paper merges whatever devices send. eclm refuses to regress silently:

1. Every update passes :func:`~eclm.pipelines.integrity.check_update` or is rejected with the
   reasons.
2. The valid updates are merged module-wise (``aggregator`` decides how contributions combine).
3. The candidate is evaluated on the cloud's held-out proxy set and, for every reporting device,
   its re-derived sub-model on the proxy samples of that device's classes.
4. If the candidate loses more than ``tolerance`` overall or ``device_tolerance`` on a device,
   shorter server steps are tried first (``server_lr`` halved up to ``step_backoff`` times: a
   backtracking line search towards the merged weights); if none passes, devices are excluded
   greedily (the one whose exclusion helps most first) until it passes:
   *partial accept*. If no subset passes: *reject*.

The input state is never modified; a rejected merge returns ``None`` and the caller keeps its
model, which stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from torch import Tensor

from eclm.modules.layer import ModuleLayer
from eclm.modules.merge import ModuleUpdate, Weighting, is_norm_statistic, merge_module_updates
from eclm.modules.spec import SubModelSpec
from eclm.pipelines.aggregators import Aggregator, WeightedAverage
from eclm.pipelines.integrity import check_update


@dataclass
class Evaluation:
    """Accuracy of a cloud state overall and per reporting device (on its classes)."""

    overall: float
    per_device: dict[str, float]


Evaluator = Callable[[dict[str, Tensor], Sequence[ModuleUpdate]], Evaluation]


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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ValidatedMerge:
    """Configured merge pipeline (see module docstring).

    Attributes:
        evaluate: ``evaluate(state, updates) -> Evaluation`` (run on a copy of the model).
        aggregator: How contributions combine (weighted average, median, trimmed mean).
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
        max_samples: Upper bound on a device's claimed sample count (integrity).
        class_rows: Classifier tensors merged row by row over the devices holding each class.
        reference_accuracy: Best overall accuracy of any accepted version; the tolerance is
            measured from ``max(current, reference)`` so small accepted drops cannot accumulate.
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
    reference_accuracy: float | None = None
    class_rows: tuple[str, ...] = ()
    max_samples: int | None = None

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
        report = MergeReport(decision="reject", reason="")
        valid: list[ModuleUpdate] = []
        seen: set[str] = set()
        for u in updates:
            if u.device_id in seen:
                report.rejected[f"{u.device_id} (duplicate upload)"] = "duplicate update from the same device; the first was kept"
                continue
            seen.add(u.device_id)
            given = given_specs.get(u.device_id)
            if given is None:
                report.rejected[u.device_id] = "unknown device (no sub-model was derived for it)"
                continue
            try:
                names = expected_names(u.spec)
            except ValueError as err:  # foreign model id, wrong layer count, module out of range
                report.rejected[u.device_id] = f"integrity: spec does not fit the cloud model: {err}"
                continue
            problems = check_update(
                u, cloud_state, layers, given, names, max_relative_norm=self.max_relative_norm,
                    max_samples=self.max_samples
            )
            if problems:
                report.rejected[u.device_id] = "integrity: " + "; ".join(problems[:3])
            else:
                valid.append(u)
        if len(valid) < self.min_updates:
            report.reason = f"{len(valid)} valid update(s), fewer than min_updates={self.min_updates}"
            return None, report

        before = self.evaluate(cloud_state, valid)
        report.cloud_acc_before, report.device_acc_before = before.overall, before.per_device
        chosen = list(valid)
        exclusion_order: list[tuple[ModuleUpdate, Evaluation]] | None = None
        while chosen:
            for step in self._steps():
                candidate = self._merge(cloud_state, layers, chosen, step)
                after = self.evaluate(candidate, chosen)
                failure = self._failure(before, after, chosen)
                if failure is None:
                    report.cloud_acc_after, report.device_acc_after = after.overall, after.per_device
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
            if self.step_backoff:
                failure += f" even at server step {step:g}"
            if len(chosen) == 1:
                report.rejected[chosen[0].device_id] = f"harmful: {failure}"
                break
            if exclusion_order is None:
                # Rank devices once by how much leaving each out helps (N candidates), then drop
                # them in that order: at most 2N candidates instead of O(N^2) greedy re-ranking.
                exclusion_order = self._rank_by_harm(cloud_state, layers, chosen)
            worst, worst_eval = exclusion_order.pop(0)
            report.rejected[worst.device_id] = (
                f"harmful: {failure}; leaving it out alone gave cloud accuracy {worst_eval.overall:.4f}"
            )
            chosen = [u for u in chosen if u is not worst]
        report.reason = "no subset of the updates keeps the cloud model within tolerance"
        return None, report

    def _steps(self) -> list[float]:
        """Server steps to try, longest first."""
        return [self.server_lr / 2**i for i in range(self.step_backoff + 1)]

    def _merge(self, cloud_state, layers, updates, step: float | None = None) -> dict[str, Tensor]:
        skip = None if self.merge_norm_statistics else is_norm_statistic
        merged = merge_module_updates(
            cloud_state, layers, updates, weighting=self.weighting, reducer=self.aggregator, skip=skip,
            class_rows=self.class_rows,
        )
        step = self.server_lr if step is None else step
        if step != 1.0:
            merged = {
                k: (cloud_state[k] + step * (v - cloud_state[k])) if v is not cloud_state[k]
                and v.is_floating_point() else v
                for k, v in merged.items()
            }
        return self.finalize(merged) if self.finalize is not None else merged

    def _failure(self, before: Evaluation, after: Evaluation, chosen: Sequence[ModuleUpdate]) -> str | None:
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

    def _rank_by_harm(self, cloud_state, layers, chosen) -> list[tuple[ModuleUpdate, Evaluation]]:
        """Devices ordered most harmful first: by the overall accuracy of the merge without them."""
        ranked = []
        for u in chosen:
            rest = [v for v in chosen if v is not u]
            ranked.append((u, self.evaluate(self._merge(cloud_state, layers, rest), rest)))
        return sorted(ranked, key=lambda item: -item[1].overall)
