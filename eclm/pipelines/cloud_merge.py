"""The cloud's validated merge (the merge half of :class:`~eclm.pipelines.cloud_service.CloudService`).

Uploads are admitted one by one (:mod:`eclm.pipelines.upload_admission`), re-based on the cloud's
current slices when they are deltas, then validated and merged by
:class:`~eclm.pipelines.validated_merge.ValidatedMerge` with the defences of the ``merge`` config
(claim bounds, robust screen, paired acceptance: docs/security.md). A rejected or failed merge
leaves the model bit-identical; an exception raised by one upload rejects that upload alone.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from eclm.campaign.messages import AttributedUpdate, MergeOutcome
from eclm.modules import ModuleUpdate, SubModelSpec
from eclm.modules.deltas import rebase_upload
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import merge_module_updates, tensor_owner
from eclm.modules.sparse_delta import Parts
from eclm.modules.sparse_training import SparsePlan
from eclm.modules.spec import TrainableSpec
from eclm.modules.submodel_cache import SubModelCache
from eclm.pipelines.adaptation import finetune, recalibrate_norms
from eclm.pipelines.aggregators import create_aggregator
from eclm.pipelines.defences import ClaimBounds, RobustScreen, reference_update
from eclm.pipelines.environments import Environment, environment_name, environment_of, merged
from eclm.pipelines.mcnemar import SampleScores
from eclm.pipelines.merge_workers import PerThread, parallel_map, resolve_workers
from eclm.pipelines.upload_admission import admit
from eclm.pipelines.validated_merge import Evaluation, MergeReport, ValidatedMerge

log = logging.getLogger(__name__)


class CloudMergeMixin:
    """Merge methods; expects ``cfg``, ``model``, ``version``, ``best_val_acc``, ``best_val_correct``,
    ``known_classes``, ``quarantine``, ``_split_uploads``, the proxy tensors, ``proxy`` (the environments replayed on
    them), ``environments``, ``_repair``, ``_version_correct`` (None at first), ``_row_keys`` and
    ``_remember_version`` on the host.

    Within one merge the cloud's weights do not change, so every sub-model of them is extracted
    once per spec (:class:`~eclm.modules.submodel_cache.SubModelCache`: re-basing uploads, the
    expected tensor names, the reference updates, the behaviour check's "before"), and so is each
    reference update per (spec, classes); every candidate's evaluation extracts once per spec too.
    With ``merge.workers`` above one, each worker thread keeps its own sub-models
    (:mod:`eclm.pipelines.merge_workers`): evaluations re-estimate norm statistics in place.
    """

    _merge_subs: PerThread[SubModelCache] | None = None  # the current weights' sub-models, during merge()
    _unchanged_merges = 0  # merges since the version last changed (each draws its own repair)
    _merge_references: dict | None = None  # reference updates by (spec, classes), during merge()
    _arrivals: _ArrivalScreen | None = None  # uploads screened on arrival, for the next merge
    _screened_on_arrival = 0  # uploads of the last merge whose screen statistics came from prescreen()

    def _subs(self) -> SubModelCache:
        """Sub-models of the current weights: this thread's cache of the merge during a merge, else a fresh one."""
        return self._merge_subs.get() if self._merge_subs is not None else SubModelCache(self.model)

    def _rebase(self, state: dict[str, Tensor], spec: SubModelSpec, meta: dict
                ) -> tuple[dict[str, Tensor], Parts | None]:
        """An upload as absolute weights: a delta upload is added to the cloud's current slices
        (a module-sparse one yields only the parts it carries, named by the returned parts)."""
        if meta.get("kind", "weights") == "weights":
            return state, None
        if meta.get("kind") != "delta":
            raise MalformedPayloadError(f"unknown update kind {meta.get('kind')!r}")
        try:
            current = self._subs().state_dict(spec)
        except (ValueError, IndexError) as err:
            raise MalformedPayloadError(f"spec does not fit the cloud model: {err}") from err
        return rebase_upload(current, state, meta, self.model.layers, spec, self._row_keys)

    # ------------------------------------------------------------------ merge
    def _evaluator(self, classes: dict[str, list[int]], envs: tuple[Environment, ...] = (),
                   device_envs: dict[str, Environment | None] | None = None,
                   cloud_state: dict[str, Tensor] | None = None):
        """``(evaluate, own_scores)`` for one merge.

        ``evaluate`` scores a candidate: the full model on the proxy-validation set, clean and
        under every environment in ``envs`` (samples concatenated), and each device's re-derived
        sub-model on the proxy-validation samples of the classes it reported, under its
        environment (device data never leaves the device; environments are replayed on proxy
        data, see eclm/pipelines/environments.py). ``own_scores(state, update)`` is the second
        part for one update, with true-class log-probabilities, from any backbone state (the
        screen's behaviour check); ``cloud_state`` is the merge's state of the current weights
        (recognised by identity).
        """
        probe = None  # one scratch copy of the model per merge; every candidate loads all its tensors
        workers = resolve_workers(self.cfg.merge.workers)

        current_scores: dict[_Scoring, SampleScores] = {}  # the current weights' scores, by what they depend on

        def own_scores(state: dict[str, Tensor], u: ModuleUpdate) -> SampleScores:
            # the current weights' sub-models come from the merge's cache; ``proxy.correct`` leaves
            # a model as it found it, so one can be shared; their scores depend on the spec, the
            # environment and the classes alone, so devices that share all three share them
            key = _Scoring(u.spec, (device_envs or {}).get(u.device_id), tuple(classes.get(u.device_id) or ()))
            if cloud_state is None or state is not cloud_state:
                return self.proxy.scores(self.model.extract(u.spec, state), key.env, key.classes)
            known = current_scores.get(key)  # worker threads: at worst computed twice, identically
            if known is None:
                known = current_scores[key] = self.proxy.scores(self._subs().module(u.spec), key.env, key.classes)
            return known

        def run(state: dict[str, Tensor], updates: list[ModuleUpdate]) -> Evaluation:
            nonlocal probe
            probe = probe if probe is not None else copy.deepcopy(self.model)
            probe.backbone.load_state_dict(state)
            # this candidate's sub-models, once per spec and worker thread
            subs = PerThread(lambda: SubModelCache(probe, size=len(updates) + 1))
            tasks = [_Scoring(probe.full_spec(), e, None) for e in (None, *envs)]
            tasks += [_Scoring(u.spec, (device_envs or {}).get(u.device_id), tuple(classes.get(u.device_id) or ()))
                      for u in updates]
            unique = list(dict.fromkeys(tasks))  # devices that share spec, environment and classes: scored once
            scored = dict(zip(unique, parallel_map(
                lambda t: self.proxy.correct(subs.get().module(t.spec), t.env, t.classes), unique, workers), strict=True))
            masks = [scored[t] for t in tasks]
            correct = torch.cat(masks[: len(envs) + 1])
            per_device, per_correct = {}, {}
            for u, mask in zip(updates, masks[len(envs) + 1 :], strict=True):
                if len(mask):
                    per_correct[u.device_id], per_device[u.device_id] = mask, float(mask.float().mean())
            overall = float(correct.float().mean()) if len(correct) else float("nan")
            return Evaluation(overall, per_device, correct, per_correct)

        return run, own_scores

    def _correct(self, model, envs: tuple[Environment, ...]) -> Tensor:
        """Per-sample correctness of ``model`` on the proxy validation set, clean and under ``envs``."""
        return torch.cat([self.proxy.correct(model, None)] + [self.proxy.correct(model, e) for e in envs])

    def _current_correct(self, envs: tuple[Environment | None, ...]) -> list[Tensor]:
        """Per-sample correctness of the current version under each of ``envs`` (``None``: clean).

        Kept per version (:meth:`_keep_evaluation` seeds it with the accepted candidate's own
        evaluation), so the accepted model is not evaluated again for the paired test's reference
        or the seen-environment accuracy.
        """
        cache = self._version_correct
        if cache is None or cache[0] != self.version:
            cache = self._version_correct = (self.version, {})
        missing = [e for e in envs if e not in cache[1]]
        if missing:
            model = self.model.extract(self.model.full_spec())
            cache[1].update({e: self.proxy.correct(model, e) for e in missing})
        return [cache[1][e] for e in envs]

    def _keep_evaluation(self, correct: Tensor | None, envs: tuple[Environment, ...]) -> None:
        """Seed :meth:`_current_correct` with the accepted candidate's correctness (clean, then ``envs``)."""
        self._version_correct = (self.version, {})
        n = len(self.val_y)
        if correct is not None and n and correct.numel() == n * (len(envs) + 1):
            self._version_correct[1].update(zip((None, *envs), correct.view(len(envs) + 1, n), strict=True))

    def _forget_evaluations(self) -> None:
        """Drop what is known about the current version's predictions (its weights were replaced)."""
        self._version_correct = None

    def seen_accuracy(self) -> float | None:
        """Mean accuracy of the cloud model under the environments seen so far (``None`` before any),
        norm statistics re-estimated per environment (:mod:`eclm.pipelines.environments`)."""
        if not self.environments:
            return None
        return sum(float(c.float().mean()) for c in self._current_correct(self.environments)) / len(self.environments)

    def _pipeline(self, classes: dict[str, list[int]], same_upload: set[str], envs: tuple[Environment, ...] = (),
                  device_envs: dict[str, Environment | None] | None = None,
                  cloud_state: dict[str, Tensor] | None = None) -> ValidatedMerge:
        m = self.cfg.merge
        # the best accepted version is a reference only on the environments it was measured on
        same_envs = envs == self._validated_environments()
        evaluate, own_scores = self._evaluator(classes, envs, device_envs, cloud_state)
        return ValidatedMerge(
            evaluate=evaluate, own_scores=own_scores,
            aggregator=create_aggregator(m.aggregator, m.trim_fraction, m.krum_byzantine, m.krum_keep),
            weighting=m.weighting, max_relative_norm=m.max_relative_norm, tolerance=m.tolerance,
            device_tolerance=m.device_tolerance, min_updates=m.min_updates, server_lr=m.server_lr,
            step_backoff=m.step_backoff, search_budget=m.search_budget, merge_norm_statistics=m.merge_norm_statistics,
            finalize=self._finalize_candidate, plain_finalize=self._finalize_plain if m.repair_epochs else None,
            reference_accuracy=self.best_val_acc if same_envs else None,
            # a module-sparse upload carries only its classes' rows: the head is always merged by class
            class_rows=self._row_keys if m.head_by_class or self.cfg.adaptation.trainable == "budgeted" else (),
            max_samples=self.cfg.data.samples_per_device[1], same_upload=same_upload,
            workers=resolve_workers(m.workers),
            **self._defences(same_envs),
        )

    def _validated_environments(self) -> tuple[Environment, ...]:
        """The environments the current version was validated on (none without ``validate_environments``)."""
        return self.environments if self.cfg.merge.validate_environments else ()

    def merge(self, uploads: list[AttributedUpdate]) -> MergeOutcome:
        """Validate and merge device uploads; a rejected or failed merge leaves the model bit-identical.

        Every upload is admitted on its own first (:mod:`eclm.pipelines.upload_admission`): one
        that is malformed, claims another device or foreign classes, or raises anything while
        being decoded or checked is rejected alone with its reason. With
        ``merge.validate_environments`` candidates are validated on the proxy data clean and
        under every environment devices have reported so far, this round's from the uploads that pass
        the integrity checks and the robust screen (an excluded upload changes nothing of the merge).
        """
        self._merge_subs = PerThread(lambda: SubModelCache(self.model))
        self._merge_references = {}
        version = self.version
        try:
            return self._merge_uploads(uploads)
        finally:
            self._merge_subs, self._merge_references = None, None
            self._unchanged_merges = 0 if self.version != version else self._unchanged_merges + 1

    def prescreen(self, uploads: list[AttributedUpdate]) -> int:
        """Screen uploads as they arrive, while other devices still adapt (``merge.screen_on_arrival``).

        Runs the robust screen's per-upload work (admission, the integrity checks, the update's
        changes, the cloud's reference update, the behaviour check on the device's classes) and
        keeps the results for the next :meth:`merge`, which uses them for an upload only when the
        cloud's weights (version and digest) and the upload (every byte and claim) are the same:
        the merge's decisions do not change, only less of its work waits for the last upload.
        Nothing here changes the model or the quarantine; an upload that fails any check, or
        anything that raises, simply leaves the merge to do that upload's work itself.

        Returns:
            How many of ``uploads`` have their statistics kept.
        """
        m = self.cfg.merge
        if not (m.screen_on_arrival and m.screen.enabled and uploads):
            return 0
        try:
            return self._prescreen(uploads)
        except Exception as err:  # noqa: BLE001 - an optimisation: the merge does the work instead
            log.warning("screening %d upload(s) on arrival failed (the merge screens them): %r", len(uploads), err)
            return 0

    def _prescreen(self, uploads: list[AttributedUpdate]) -> int:
        arrivals = self._arrival_screen()
        fresh = [u for u in uploads
                 if self.quarantine.remaining.get(u.channel, 0) <= 0 and _upload_key(u) not in arrivals.statistics]
        if not fresh:
            return 0
        self._merge_subs, self._merge_references = arrivals.subs, arrivals.references
        try:
            admission = admit(fresh, self.model.layer_sizes, self._rebase)
            classes = {u.device_id: list(u.classes or []) for u in admission.updates}
            reported = {u.channel: environment_of(u.update.metrics.environment, u.update.metrics.severity)
                        for u in fresh}
            own_envs = reported if self.cfg.merge.validate_environments else None
            pipeline = self._pipeline(classes, self._split_uploads, self._validated_environments(), own_envs,
                                      arrivals.cloud_state)
            stats = pipeline.statistics_of(arrivals.cloud_state, self.model.layers, admission.updates,
                                           admission.issued, self._names)
        finally:
            self._merge_subs, self._merge_references = None, None
        keys = {u.channel: _upload_key(u) for u in fresh}
        arrivals.statistics.update({keys[d]: v for d, v in stats.items()})
        return len(stats)

    def _arrival_screen(self) -> _ArrivalScreen:
        """The screen-on-arrival results of the current weights (a new, empty one when they changed)."""
        token = (self.version, self.state_digest())
        if self._arrivals is None or self._arrivals.token != token:
            self._arrivals = _ArrivalScreen(token, self.model.backbone.state_dict(),
                                            subs=PerThread(lambda: SubModelCache(self.model)))
        return self._arrivals

    def _known_statistics(self, uploads: list[AttributedUpdate]) -> dict[str, tuple]:
        """``(statistics, admitted update)`` per channel that :meth:`prescreen` kept for ``uploads``
        (the first upload of each channel, as admission keeps it), if the cloud's weights are still
        those they were computed on."""
        if self._arrivals is None or not self._arrivals.statistics:
            return {}
        if self._arrivals.token != (self.version, self.state_digest()):
            return {}
        known, seen = {}, set()
        for u in uploads:
            if u.channel not in seen:
                seen.add(u.channel)
                entry = self._arrivals.statistics.get(_upload_key(u))
                if entry is not None:
                    known[u.channel] = entry
        return known

    def _merge_uploads(self, uploads: list[AttributedUpdate]) -> MergeOutcome:
        known, self._arrivals = self._known_statistics(uploads), None  # one merge uses them, whatever it decides
        self._screened_on_arrival = len(known)
        admission = admit(uploads, self.model.layer_sizes, self._rebase, {c: u for c, (_, u) in known.items()})
        reported = {u.channel: environment_of(u.update.metrics.environment, u.update.metrics.severity)
                    for u in uploads}
        classes = {u.device_id: list(u.classes or []) for u in admission.updates}
        cloud_state = self.model.backbone.state_dict()
        updates, refused = self.quarantine.admit(admission.updates)
        rejected = dict(admission.rejected) | refused
        split_members, self._split_uploads = self._split_uploads, set()
        attempt = functools.partial(self._screen_and_merge, cloud_state, classes, split_members, reported,
                                    admission.issued, known)
        try:
            new_state, report, envs = attempt(updates)
        except Exception as err:  # noqa: BLE001 - find the upload that breaks the merge, merge the rest
            broken = self._breaking_updates(cloud_state, updates)
            if not broken:
                return self._outcome(MergeOutcome(decision="reject", reason=f"merge failed: {err!r}",
                                                  rejected=rejected, version=self.version))
            rejected |= {u.device_id: f"merge failed on this upload: {e}" for u, e in broken}
            try:
                new_state, report, envs = attempt([u for u in updates if all(u is not b for b, _ in broken)])
            except Exception as err:  # noqa: BLE001 - the model must stay untouched whatever happens
                return self._outcome(MergeOutcome(decision="reject", reason=f"merge failed: {err!r}",
                                                  rejected=rejected, version=self.version))
        return self._outcome(self._conclude(new_state, report, rejected, envs))

    def _screen_and_merge(self, cloud_state: dict[str, Tensor], classes: dict[str, list[int]], split_members: set[str],
                          reported: dict[str, Environment | None], issued: dict[str, SubModelSpec],
                          known: dict[str, tuple], updates: list[ModuleUpdate]
                          ) -> tuple[dict[str, Tensor] | None, MergeReport, tuple[Environment, ...]]:
        """``(new state or None, report, environments)`` of one validated merge of ``updates``.

        Only the updates that pass the integrity checks and the robust screen shape the rest of
        the merge: the environments their devices report join the ones validated on (and the
        repair fine-tune's), and what they carry is what the repair trains. A device the screen
        excludes changes nothing of the merge (before, its reported environment still did).
        ``known``: the screen's statistics of uploads screened on arrival (:meth:`prescreen`).
        """
        own_envs = reported if self.cfg.merge.validate_environments else None
        screening = self._pipeline(classes, split_members, self._validated_environments(), own_envs, cloud_state)
        screening.known_statistics = known
        valid, report = screening.screened(cloud_state, self.model.layers, updates, issued, self._names)
        envs = merged(self.environments, [reported.get(u.device_id) for u in valid])
        self._repair = (envs, self._repair_plan(valid))
        pipeline = (self._pipeline(classes, split_members, envs, reported, cloud_state)
                    if self.cfg.merge.validate_environments else screening)
        return (*pipeline.merge_screened(cloud_state, self.model.layers, valid, report), envs)

    def _breaking_updates(self, cloud_state, updates: list[ModuleUpdate]) -> list[tuple[ModuleUpdate, str]]:
        """The updates whose merge math raises on their own (only looked for when a merge raised)."""
        broken = []
        for u in updates:
            try:
                merge_module_updates(cloud_state, self.model.layers, [u])
            except Exception as err:  # noqa: BLE001
                broken.append((u, f"{type(err).__name__}: {err}"))
        return broken

    def _conclude(self, new_state, report, rejected: dict[str, str], envs: tuple[Environment, ...]) -> MergeOutcome:
        report.rejected.update(rejected)
        self.quarantine.record(report.rejected)
        if new_state is not None:
            validated = self._validated_environments()
            self.model.backbone.load_state_dict(new_state)
            self.version += 1
            self._keep_evaluation(report.evaluation.correct if report.evaluation is not None else None,
                                  envs if self.cfg.merge.validate_environments else ())
            self._remember_version()
            self.environments = envs
            if validated != self._validated_environments():  # references only on the same environments
                self.best_val_acc, self.best_val_correct = None, None
            if report.cloud_acc_after is not None:
                self.best_val_acc = max(self.best_val_acc or 0.0, report.cloud_acc_after)
            self._remember_best_predictions()
        return MergeOutcome(
            decision=report.decision, reason=report.reason, accepted=report.accepted, rejected=report.rejected,
            cloud_acc_before=report.cloud_acc_before, cloud_acc_after=report.cloud_acc_after,
            device_acc_before=report.device_acc_before, device_acc_after=report.device_acc_after,
            server_step=report.server_step, version=self.version, screen=_json(report.screen),
            paired=_json(report.paired), candidates=report.candidates,
            details=({"repair": f"skipped: {report.plain_finalize_reason}"} if report.plain_finalize_reason else {})
            | ({"screened_on_arrival": str(self._screened_on_arrival)} if self._screened_on_arrival else {}),
        )

    def _outcome(self, outcome: MergeOutcome) -> MergeOutcome:
        """``outcome`` with the cloud's accuracy on the environments seen so far."""
        seen = self.seen_accuracy()
        return outcome.model_copy(update={
            "cloud_seen_acc": seen if seen is not None and math.isfinite(seen) else None,
            "environments": tuple(environment_name(e) for e in self.environments)})

    def _defences(self, same_envs: bool = True) -> dict:
        """The merge's defences from the ``merge`` config (docs/security.md): claim bounds, the
        robust screen with the cloud's reference updates, and the paired acceptance test."""
        m, s = self.cfg.merge, self.cfg.merge.screen
        screen = RobustScreen(norm_multiplier=s.norm_multiplier, min_reference_norm_ratio=s.min_reference_norm_ratio,
                              min_centre_cosine=s.min_centre_cosine,
                              min_trust_cosine=s.min_trust_cosine, min_head_trust_cosine=s.min_head_trust_cosine,
                              min_cohort=s.min_cohort, duplicate_distance=s.duplicate_distance,
                              max_own_drop=s.max_own_drop, own_alpha=m.alpha,
                              max_own_loss_rise=s.max_own_loss_rise,
                              max_relative_stable_rank=s.max_relative_stable_rank,
                              workers=resolve_workers(m.workers)) if s.enabled else None
        claims = ClaimBounds(max_samples=self.cfg.data.samples_per_device[1], num_classes=self.num_classes,
                             importance_tolerance=m.importance_tolerance)
        return {"claims": claims, "known_classes": self.known_classes, "screen": screen,
                "reference": self._reference_update if screen is not None and s.trust else None,
                "acceptance": m.acceptance, "alpha": m.alpha, "max_drop": m.max_drop,
                "device_max_drop": m.device_max_drop,
                "reference_correct": self.best_val_correct if same_envs else None}

    def _reference_update(self, update: ModuleUpdate) -> dict[str, Tensor]:
        """The cloud's own short fine-tune of the update's sub-model on the proxy samples of the
        device's classes, with the devices' optimiser settings (the screen's trust reference).

        It depends on the spec and the classes alone (the seed is the version's), so within a merge
        devices that share both share one reference (the same tensors: read them, do not modify them)."""
        a = self.cfg.adaptation
        cls = sorted(self.known_classes.get(update.device_id) or update.classes or [])
        known = self._merge_references if self._merge_references is not None else {}
        key = (update.spec, tuple(cls))
        if key not in known:
            mask = torch.isin(self.train_y, torch.tensor(cls, dtype=self.train_y.dtype)) if cls else slice(None)
            known[key] = reference_update(
                self._subs().copy(update.spec), self.train_x[mask], self.train_y[mask],
                steps=self.cfg.merge.screen.reference_steps, lr=a.lr, batch_size=a.batch_size, momentum=a.momentum,
                local_classes=cls if a.restrict_to_local_classes else None, seed=self.cfg.seed + self.version,
                in_place=True, max_grad_norm=a.max_grad_norm)
        return known[key]

    def _remember_best_predictions(self) -> None:
        """Keep the per-sample correctness of the best accepted version (the paired test's reference),
        on the proxy validation set clean and under the environments it was validated on."""
        correct = torch.cat(self._current_correct((None, *self._validated_environments())))
        if self.best_val_correct is None or correct.float().mean() >= self.best_val_correct.float().mean():
            self.best_val_correct = correct

    def _finalize_plain(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`_finalize_candidate` without the repair fine-tune (a merge falls back to it when
        this round's repair draw leaves the current model worse than the best accepted version)."""
        return self._finalize_candidate(state, repair=False)

    def _finalize_candidate(self, state: dict[str, Tensor], repair: bool = True) -> dict[str, Tensor]:
        """Prepare a merged candidate on a copy: with ``merge.repair_epochs``, fine-tune it briefly
        on the proxy data (each image under a random one of the environments being validated, with
        ``merge.repair_environments``; only what this round's uploads carried, with
        ``merge.repair_scope: merged``) so device drift cannot pull the shared weights away from
        the cloud's own task; then re-estimate BatchNorm statistics on the clean proxy data (unless
        device statistics were merged). The result is what the validation evaluates and what is
        accepted.
        """
        m = self.cfg.merge
        probe = copy.deepcopy(self.model.backbone)
        probe.load_state_dict(state)
        if m.repair_epochs and repair:
            envs, plan = self._repair
            gen = torch.Generator().manual_seed(self._repair_seed())
            x, y = self.proxy.mixed(envs if m.repair_environments else (), gen)
            sparse = SparsePlan(self.model.layers, self.model.full_spec(), plan) if plan is not None else None
            finetune(probe, x, y, epochs=m.repair_epochs, lr=m.repair_lr, batch_size=self.cfg.adaptation.batch_size * 2,
                     generator=gen, sparse=sparse)
        if not m.merge_norm_statistics:
            recalibrate_norms(probe, self.train_x)
        return probe.state_dict()

    def _repair_seed(self) -> int:
        """The repair fine-tune's seed: fixed per version and per merge at that version.

        One draw serves the baseline and every candidate of a merge. A rejected merge keeps the
        version, so with a seed fixed per version every later round would meet the same draw:
        a harmful one (measured: the current model 3.5 points below the version it was accepted
        as, over 21 environments) would fail every candidate from then on, or, with the fallback
        of :meth:`_finalize_plain`, cost the cloud its own learning until the version changes.
        """
        return self.cfg.seed + self.version + 1_000_003 * self._unchanged_merges

    def _repair_plan(self, updates: list[ModuleUpdate]) -> TrainableSpec | None:
        """What the uploads of a round carried, as a trainable spec of the cloud model (``None``:
        everything, with ``merge.repair_scope: all``)."""
        full = self.model.full_spec()
        if self.cfg.merge.repair_scope == "all" or any(u.trained is None for u in updates):
            return None
        groups = [sorted({g for u in updates for g in u.carried.groups[i]}) for i in range(len(full.groups))]
        shared = any(tensor_owner(self.model.layers, k) is None and k not in self._row_keys
                     for u in updates for k in u.state)
        rows = sorted({int(c) for u in updates for c in (u.classes or [])})
        return TrainableSpec(groups=groups, head_rows=rows, shared=shared)

    def _names(self, spec: SubModelSpec) -> set[str]:
        return self._subs().names(spec)


@dataclass
class _ArrivalScreen:
    """What :meth:`CloudMergeMixin.prescreen` computed on one state of the cloud's weights.

    Attributes:
        token: ``(version, digest of the weights)`` the results hold for.
        cloud_state: Those weights (the model's own tensors: they must not change while kept).
        subs: Sub-models of those weights, per worker thread.
        statistics: ``(the screen's statistics, the admitted update)`` per upload (keyed by
            :func:`_upload_key`).
        references: The cloud's reference updates by ``(spec, classes)``, shared by the uploads.
    """

    token: tuple[int, str]
    cloud_state: dict[str, Tensor]
    subs: PerThread[SubModelCache]
    statistics: dict[str, tuple] = field(default_factory=dict)
    references: dict = field(default_factory=dict)


def _upload_key(upload: AttributedUpdate) -> str:
    """A digest of everything an upload is and claims (its channel, issued spec, enrolled
    classes, every field of the update and every payload byte)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(upload.model_dump_json(exclude={"update": {"payload"}}).encode())
    h.update(upload.update.payload)
    return h.hexdigest()


@dataclass(frozen=True)
class _Scoring:
    """One evaluation of a candidate: the sub-model ``spec`` under ``env`` on ``classes`` (``None``:
    all). What an evaluation depends on besides the weights, so a key of shared results."""

    spec: SubModelSpec
    env: Environment | None
    classes: tuple[int, ...] | None


def _json(value):
    """Report statistics as plain JSON values (numbers, strings, lists, dicts; tensors become lists)."""
    import json

    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


__all__ = ["CloudMergeMixin"]
