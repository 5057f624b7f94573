"""The cloud's validated merge (the merge half of :class:`~eclm.pipelines.cloud_service.CloudService`).

Uploads are admitted one by one (:mod:`eclm.pipelines.upload_admission`), re-based on the cloud's
current slices when they are deltas, then validated and merged by
:class:`~eclm.pipelines.validated_merge.ValidatedMerge` with the defences of the ``merge`` config
(claim bounds, robust screen, paired acceptance: docs/security.md). A rejected or failed merge
leaves the model bit-identical; an exception raised by one upload rejects that upload alone.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from eclm.campaign.messages import AttributedUpdate, MergeOutcome
from eclm.modules import ModuleUpdate, SubModelSpec, classifier_keys
from eclm.modules.deltas import apply_delta
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import merge_module_updates
from eclm.pipelines.adaptation import finetune, recalibrate_norms
from eclm.pipelines.aggregators import create_aggregator
from eclm.pipelines.defences import ClaimBounds, RobustScreen, reference_update
from eclm.pipelines.mcnemar import correct_mask
from eclm.pipelines.upload_admission import admit
from eclm.pipelines.validated_merge import Evaluation, ValidatedMerge


class CloudMergeMixin:
    """Merge methods; expects ``cfg``, ``model``, ``version``, ``best_val_acc``, ``best_val_correct``,
    ``known_classes``, ``_split_uploads``, the proxy tensors and ``_remember_version`` on the host."""

    def _rebase(self, state: dict[str, Tensor], spec: SubModelSpec, meta: dict) -> dict[str, Tensor]:
        """An upload as absolute weights: a delta upload is added to the cloud's current slices."""
        if meta.get("kind", "weights") == "weights":
            return state
        if meta.get("kind") != "delta":
            raise MalformedPayloadError(f"unknown update kind {meta.get('kind')!r}")
        try:
            current = self.model.extract(spec).state_dict()
        except (ValueError, IndexError) as err:
            raise MalformedPayloadError(f"spec does not fit the cloud model: {err}") from err
        return apply_delta(current, state)

    # ------------------------------------------------------------------ merge
    def _evaluator(self, classes: dict[str, list[int]]):
        # The cloud evaluates each device's re-derived sub-model on the proxy-validation samples
        # of the classes it reported (device data never leaves the device).
        def run(state: dict[str, Tensor], updates: list[ModuleUpdate]) -> Evaluation:
            probe = copy.deepcopy(self.model)
            probe.backbone.load_state_dict(state)
            correct = correct_mask(probe.extract(probe.full_spec()), self.val_x, self.val_y)
            per_device, per_correct = {}, {}
            for u in updates:
                mask = torch.isin(self.val_y, torch.tensor(classes.get(u.device_id) or [], dtype=self.val_y.dtype))
                if mask.sum() > 0:
                    per_correct[u.device_id] = correct_mask(probe.extract(u.spec), self.val_x[mask], self.val_y[mask])
                    per_device[u.device_id] = float(per_correct[u.device_id].float().mean())
            overall = float(correct.float().mean()) if len(correct) else float("nan")
            return Evaluation(overall, per_device, correct, per_correct)

        return run

    def _pipeline(self, classes: dict[str, list[int]], same_upload: set[str]) -> ValidatedMerge:
        m = self.cfg.merge
        return ValidatedMerge(
            evaluate=self._evaluator(classes),
            aggregator=create_aggregator(m.aggregator, m.trim_fraction, m.krum_byzantine, m.krum_keep),
            weighting=m.weighting, max_relative_norm=m.max_relative_norm, tolerance=m.tolerance,
            device_tolerance=m.device_tolerance, min_updates=m.min_updates, server_lr=m.server_lr,
            step_backoff=m.step_backoff, merge_norm_statistics=m.merge_norm_statistics,
            finalize=self._finalize_candidate, reference_accuracy=self.best_val_acc,
            class_rows=tuple(classifier_keys(self.model.backbone)) if m.head_by_class else (),
            max_samples=self.cfg.data.samples_per_device[1], same_upload=same_upload, **self._defences(),
        )

    def merge(self, uploads: list[AttributedUpdate]) -> MergeOutcome:
        """Validate and merge device uploads; a rejected or failed merge leaves the model bit-identical.

        Every upload is admitted on its own first (:mod:`eclm.pipelines.upload_admission`): one
        that is malformed, claims another device or foreign classes, or raises anything while
        being decoded or checked is rejected alone with its reason.
        """
        admission = admit(uploads, self.model.layer_sizes, self._rebase)
        classes = {u.device_id: list(u.classes or []) for u in admission.updates}
        cloud_state = self.model.backbone.state_dict()
        updates, rejected = admission.updates, dict(admission.rejected)
        split_members, self._split_uploads = self._split_uploads, set()
        pipeline = self._pipeline(classes, split_members)
        try:
            new_state, report = pipeline.run(cloud_state, self.model.layers, updates, admission.issued, self._names)
        except Exception as err:  # noqa: BLE001 - find the upload that breaks the merge, merge the rest
            broken = self._breaking_updates(cloud_state, updates)
            if not broken:
                return MergeOutcome(decision="reject", reason=f"merge failed: {err!r}", rejected=rejected,
                                    version=self.version)
            rejected |= {u.device_id: f"merge failed on this upload: {e}" for u, e in broken}
            kept = [u for u in updates if all(u is not b for b, _ in broken)]
            return self._merge_rest(pipeline, cloud_state, kept, admission.issued, rejected)
        return self._conclude(new_state, report, rejected)

    def _merge_rest(self, pipeline, cloud_state, updates, issued, rejected) -> MergeOutcome:
        try:
            new_state, report = pipeline.run(cloud_state, self.model.layers, updates, issued, self._names)
        except Exception as err:  # noqa: BLE001 - the model must stay untouched whatever happens
            return MergeOutcome(decision="reject", reason=f"merge failed: {err!r}", rejected=rejected,
                                version=self.version)
        return self._conclude(new_state, report, rejected)

    def _breaking_updates(self, cloud_state, updates: list[ModuleUpdate]) -> list[tuple[ModuleUpdate, str]]:
        """The updates whose merge math raises on their own (only looked for when a merge raised)."""
        broken = []
        for u in updates:
            try:
                merge_module_updates(cloud_state, self.model.layers, [u])
            except Exception as err:  # noqa: BLE001
                broken.append((u, f"{type(err).__name__}: {err}"))
        return broken

    def _conclude(self, new_state, report, rejected: dict[str, str]) -> MergeOutcome:
        report.rejected.update(rejected)
        if new_state is not None:
            self.model.backbone.load_state_dict(new_state)
            self.version += 1
            self._remember_version()
            if report.cloud_acc_after is not None:
                self.best_val_acc = max(self.best_val_acc or 0.0, report.cloud_acc_after)
            self._remember_best_predictions()
        return MergeOutcome(
            decision=report.decision, reason=report.reason, accepted=report.accepted, rejected=report.rejected,
            cloud_acc_before=report.cloud_acc_before, cloud_acc_after=report.cloud_acc_after,
            device_acc_before=report.device_acc_before, device_acc_after=report.device_acc_after,
            server_step=report.server_step, version=self.version, screen=_json(report.screen),
            paired=_json(report.paired),
        )

    def _defences(self) -> dict:
        """The merge's defences from the ``merge`` config (docs/security.md): claim bounds, the
        robust screen with the cloud's reference updates, and the paired acceptance test."""
        m, s = self.cfg.merge, self.cfg.merge.screen
        screen = RobustScreen(norm_multiplier=s.norm_multiplier, min_centre_cosine=s.min_centre_cosine,
                              min_trust_cosine=s.min_trust_cosine, min_head_trust_cosine=s.min_head_trust_cosine,
                              min_cohort=s.min_cohort, duplicate_distance=s.duplicate_distance) if s.enabled else None
        claims = ClaimBounds(max_samples=self.cfg.data.samples_per_device[1], num_classes=self.num_classes,
                             importance_tolerance=m.importance_tolerance)
        return {"claims": claims, "known_classes": self.known_classes, "screen": screen,
                "reference": self._reference_update if screen is not None and s.trust else None,
                "acceptance": m.acceptance, "alpha": m.alpha, "max_drop": m.max_drop,
                "device_max_drop": m.device_max_drop, "reference_correct": self.best_val_correct}

    def _reference_update(self, update: ModuleUpdate) -> dict[str, Tensor]:
        """The cloud's own short fine-tune of the update's sub-model on the proxy samples of the
        device's classes, with the devices' optimiser settings (the screen's trust reference)."""
        a = self.cfg.adaptation
        cls = sorted(self.known_classes.get(update.device_id) or update.classes or [])
        mask = torch.isin(self.train_y, torch.tensor(cls, dtype=self.train_y.dtype)) if cls else slice(None)
        return reference_update(self.model.extract(update.spec), self.train_x[mask], self.train_y[mask],
                                steps=self.cfg.merge.screen.reference_steps, lr=a.lr, batch_size=a.batch_size,
                                momentum=a.momentum, local_classes=cls if a.restrict_to_local_classes else None,
                                seed=self.cfg.seed + self.version, in_place=True)

    def _remember_best_predictions(self) -> None:
        """Keep the per-sample correctness of the best accepted version (the paired test's reference)."""
        correct = correct_mask(self.model.extract(self.model.full_spec()), self.val_x, self.val_y)
        if self.best_val_correct is None or correct.float().mean() >= self.best_val_correct.float().mean():
            self.best_val_correct = correct

    def _finalize_candidate(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Prepare a merged candidate on a copy: re-estimate BatchNorm statistics on the proxy
        data (unless device statistics were merged) and, with ``merge.repair_epochs``, fine-tune
        it briefly on the proxy data so device drift cannot pull the shared weights away from
        the cloud's own task. The result is what the validation evaluates and what is accepted.
        """
        m = self.cfg.merge
        probe = copy.deepcopy(self.model.backbone)
        probe.load_state_dict(state)
        if not m.merge_norm_statistics:
            recalibrate_norms(probe, self.train_x)
        if m.repair_epochs:
            gen = torch.Generator().manual_seed(self.cfg.seed + self.version)
            finetune(probe, self.train_x, self.train_y, epochs=m.repair_epochs, lr=m.repair_lr,
                     batch_size=self.cfg.adaptation.batch_size * 2, generator=gen)
        return probe.state_dict()

    def _names(self, spec: SubModelSpec) -> set[str]:
        return set(self.model.extract(spec).state_dict())


def _json(value):
    """Report statistics as plain JSON values (numbers, strings, lists, dicts; tensors become lists)."""
    import json

    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


__all__ = ["CloudMergeMixin"]
