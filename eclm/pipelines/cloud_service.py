"""The cloud's work, Ray-free: offline stage, per-device derivation, validated merge, versions.

:class:`CloudService` is a plain class; ``eclm.actors`` turns it into the ``CloudActor`` with
``ray.remote`` and the ``cloud`` resource, and :mod:`eclm.campaign.local` calls it in-process.
It takes and returns the typed messages of :mod:`eclm.campaign.messages`; weights travel as
safetensors bytes. It keeps no state about devices between calls: the spec issued to a device
comes back with its update, so a cloud restored from a :class:`CloudSnapshot` after a crash
merges exactly as the one that died would have.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time

import torch
from torch import Tensor

from eclm.campaign.messages import (
    AttributedUpdate,
    CloudInfo,
    CloudSnapshot,
    DeviceSummary,
    EpochRecord,
    MergeOutcome,
    Resources,
    SubModelPackage,
)
from eclm.config import PlatformConfig
from eclm.data import load_dataset
from eclm.modules import (
    BudgetTooSmallError,
    DeviceProfile,
    ModularModel,
    ModuleUpdate,
    SubModelSpec,
    classifier_keys,
    derive_submodel,
    modularize,
    pack_state,
    train_offline,
    unpack_state,
)
from eclm.modules.codec import encode
from eclm.modules.deltas import first_delivery, rebase_upload, sparse_download
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import merge_module_updates, tensor_owner
from eclm.modules.sparse_delta import Parts
from eclm.modules.sparse_training import SparsePlan
from eclm.modules.spec import TrainableSpec
from eclm.modules.trainable import TrainingMemory, derive_trainable
from eclm.pipelines.adaptation import (
    effective_batch,
    evaluate,
    finetune,
    recalibrate_norms,
    training_memory_model,
)
from eclm.pipelines.aggregators import create_aggregator
from eclm.pipelines.environments import (
    Environment,
    ProxyEnvironments,
    environment_name,
    environment_of,
    merged,
)
from eclm.pipelines.profiler import budget_from_resources
from eclm.pipelines.split_service import SplitCloudMixin
from eclm.pipelines.upload_admission import admit
from eclm.pipelines.validated_merge import Evaluation, ValidatedMerge


class CloudService(SplitCloudMixin):
    """Holds the modular cloud model and its recent versions.

    Args:
        config: The platform config.
        threads: torch threads for this process.
    """

    def __init__(self, config: PlatformConfig, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.cfg = config
        torch.manual_seed(config.seed)
        data, split = load_dataset(config.data)
        cloud = split.cloud
        self.train_x, self.train_y = cloud.train.images, cloud.train.labels
        self.val_x, self.val_y = cloud.val.images, cloud.val.labels
        self.num_classes = data.num_classes
        b = config.backbone
        self.model: ModularModel = modularize(
            b.name, modules_per_layer=b.modules_per_layer, input_size=config.input_size, weights_path=b.weights_path,
            selector_width=b.selector_width, selector_dim=b.selector_dim, num_classes=self.num_classes, **b.kwargs,
        ).eval()
        self.version = 0
        self.best_val_acc: float | None = None
        self.proxy = ProxyEnvironments(self.train_x, self.train_y, self.val_x, self.val_y, config.seed)
        self.environments: tuple[Environment, ...] = ()  # reported by devices whose uploads were merged
        self._repair: tuple[tuple[Environment, ...], TrainableSpec | None] = ((), None)  # set by merge()
        self._versions: dict[int, dict[str, Tensor]] = {}  # recent versions, to ship deltas against
        self._remember_version()

    # ------------------------------------------------------------------ info
    def info(self) -> CloudInfo:
        """Architecture facts devices and the coordinator need."""
        costs = self.model.costs()
        return CloudInfo(
            model_id=self.model.model_id, arch=self.model.arch, layer_names=[l.name for l in self.model.layers],
            layer_sizes=self.model.layer_sizes, allows_empty=[l.allows_empty for l in self.model.layers],
            costs=costs.to_dict(), full_cost=costs.total(self.model.full_spec()), num_classes=self.num_classes,
            version=self.version, proxy_train=len(self.train_x), proxy_val=len(self.val_x),
        )

    def pretrain(self, progress: bool = False) -> list[EpochRecord]:
        """Run the offline stage on the proxy data; the result is version 0."""
        history = train_offline(
            self.model, self.train_x, self.train_y, self.val_x, self.val_y, self.cfg.offline,
            num_classes=self.num_classes, progress=progress,
        )
        self._versions = {}
        self._remember_version()
        self.best_val_acc = self.validation_accuracy()
        self.environments = ()
        return [EpochRecord(**vars(h)) for h in history]

    def validation_accuracy(self) -> float:
        return evaluate(self.model.extract(self.model.full_spec()), self.val_x, self.val_y)[0]

    def selector_payload(self) -> bytes:
        """The selector's weights (safetensors), which devices use for importance summaries."""
        return pack_state(self.model.selector.state_dict(), meta={"version": self.version})

    def model_payload(self) -> bytes:
        """The full cloud backbone (safetensors) with its full spec."""
        return pack_state(self.model.backbone.state_dict(), self.model.full_spec(), {"version": self.version})

    # ------------------------------------------------------------------ durable state
    def snapshot(self) -> CloudSnapshot:
        """The current version as a checkpoint (``backbone.*`` and ``selector.*`` tensors)."""
        state = {f"backbone.{k}": v for k, v in self.model.backbone.state_dict().items()}
        state |= {f"selector.{k}": v for k, v in self.model.selector.state_dict().items()}
        meta = {"model_id": self.model.model_id, "version": self.version,
                "environments": [list(e) for e in self.environments]}
        return CloudSnapshot(version=self.version, weights=pack_state(state, meta=meta), best_val_acc=self.best_val_acc)

    def restore(self, snapshot: CloudSnapshot) -> int:
        """Become the cloud of ``snapshot`` (weights, version, kept versions, best accuracy).

        Returns:
            The restored version.

        Raises:
            MalformedPayloadError: If the weights do not decode or do not fit the model.
        """
        backbone, selector = _split_checkpoint(snapshot.weights)
        self.model.backbone.load_state_dict(backbone)
        self.model.selector.load_state_dict(selector)
        self.version, self.best_val_acc = snapshot.version, snapshot.best_val_acc
        envs = unpack_state(snapshot.weights)[2].get("environments") or []
        self.environments = merged((), (environment_of(e[0], e[1]) for e in envs))
        self._versions = {v: _split_checkpoint(b)[0] for v, b in sorted(snapshot.kept_versions.items())}
        self._remember_version()
        return self.version

    def kept_versions(self) -> list[int]:
        """Versions the cloud can ship deltas against (the current one included)."""
        return sorted(self._versions)

    def state_digest(self) -> str:
        """SHA-256 of the cloud backbone's tensors (lets tests prove bit-identity across actors)."""
        h = hashlib.sha256()
        for k, v in sorted(self.model.backbone.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ derivation
    def budget(self, device: str, resources: Resources) -> DeviceProfile:
        """The sub-model budget of a device with ``resources`` (see :mod:`eclm.pipelines.profiler`)."""
        a = self.cfg.adaptation
        full = self.model.costs().total(self.model.full_spec())
        return budget_from_resources(
            device, resources.as_dict(), full_params=full["params"], batch_size=a.batch_size,
            target_step_seconds=a.target_step_seconds, max_transfer_seconds=a.max_transfer_seconds,
            sparse=a.trainable == "budgeted",
        )

    def training_memory(self) -> TrainingMemory:
        """The training-memory model of the devices' adaptation (:mod:`eclm.modules.trainable`)."""
        a = self.cfg.adaptation
        return training_memory_model(self.model.backbone,
                                     effective_batch(a.batch_size, a.replay_ratio, a.replay_capacity > 0))

    def derive(self, summary: DeviceSummary) -> SubModelPackage:
        """Derive and package the sub-model for one device.

        If the device already holds exactly the derived spec from the current cloud version,
        nothing is shipped: it keeps its locally adapted weights. If it holds the spec from an
        older version and ``adaptation.exchange`` is ``delta``, it gets the cloud's change since
        that version, carrying only the modules and rows that changed (it adds it to its adapted
        weights); otherwise the full sub-model. With ``adaptation.trainable: budgeted`` the
        package also names the modules the device trains (:func:`~eclm.modules.trainable.derive_trainable`).

        Raises:
            BudgetTooSmallError: If the device cannot hold even the minimal sub-model, or (budgeted)
                not even train its classifier rows.
        """
        budget = self.budget(summary.device, summary.resources)
        importance = [list(r) for r in summary.importance]
        start = time.perf_counter()
        spec = derive_submodel(self.model, importance, budget)
        trainable, cost = self._trainable(spec, importance, budget, summary.classes)
        solve = time.perf_counter() - start
        held = summary.held
        same_spec = held is not None and held.spec == spec
        payload = None
        if not (same_spec and held.version == self.version):
            payload = self._package(summary.device, spec, held.version if same_spec else None)
        limits = budget.limits() | ({"train_memory": budget.max_train_memory} if budget.max_train_memory else {})
        return SubModelPackage(device=summary.device, spec=spec, payload=payload, version=self.version,
                               budget=limits, cost=cost, solve_seconds=solve, trainable=trainable)

    def _trainable(self, spec: SubModelSpec, importance: list[list[float]], budget: DeviceProfile,
                   classes) -> tuple[TrainableSpec | None, dict[str, float]]:
        """What the device trains (``None``: everything) and the sub-model's cost."""
        a = self.cfg.adaptation
        costs = self.model.costs()
        cost = costs.total(spec)
        if a.trainable == "all":
            return None, cost
        memory = self.training_memory()
        plan = derive_trainable(costs, spec, importance, memory, max_memory=budget.max_train_memory,
                                share=a.trainable_share, head_rows=classes if a.train_head == "own" else None)
        return plan, cost | {"train_memory": memory.total(costs, spec, plan)}

    def _package(self, device: str, spec: SubModelSpec, held_version: int | None) -> bytes:
        """The full sub-model, or the change since ``held_version`` when a delta can be made."""
        a = self.cfg.adaptation
        meta = {"version": self.version, "device": device}
        current = self.model.extract(spec).state_dict()
        base = self._versions.get(held_version) if held_version is not None else None
        if a.exchange == "delta" and base is not None:
            old = self.model.extract(spec, base).state_dict()
            diffs, parts = sparse_download(current, old, self.model.layers, spec, self._row_keys)
            wire, _ = encode(diffs, a.delta_dtype)
            return pack_state(wire, spec, meta | {"kind": "delta", "base_version": held_version} | parts.to_meta())
        return pack_state(first_delivery(current, a.first_delivery_dtype), spec, meta)

    def _remember_version(self) -> None:
        """Keep the current weights (the last ``merge.keep_versions`` versions) to diff against."""
        self._versions[self.version] = {k: v.detach().clone() for k, v in self.model.backbone.state_dict().items()}
        for old in sorted(self._versions)[: -self.cfg.merge.keep_versions]:
            del self._versions[old]

    @property
    def _row_keys(self) -> tuple[str, ...]:
        """The classifier's tensors (rows = classes)."""
        return tuple(classifier_keys(self.model.backbone))

    def _rebase(self, state: dict[str, Tensor], spec: SubModelSpec, meta: dict
                ) -> tuple[dict[str, Tensor], Parts | None]:
        """An upload as absolute weights: a delta upload is added to the cloud's current slices
        (a module-sparse one yields only the parts it carries, named by the returned parts)."""
        if meta.get("kind", "weights") == "weights":
            return state, None
        if meta.get("kind") != "delta":
            raise MalformedPayloadError(f"unknown update kind {meta.get('kind')!r}")
        try:
            current = self.model.extract(spec).state_dict()
        except (ValueError, IndexError) as err:
            raise MalformedPayloadError(f"spec does not fit the cloud model: {err}") from err
        return rebase_upload(current, state, meta, self.model.layers, spec, self._row_keys)

    # ------------------------------------------------------------------ merge
    def _evaluator(self, classes: dict[str, list[int]], envs: tuple[Environment, ...] = (),
                   device_envs: dict[str, Environment | None] | None = None):
        # The cloud evaluates its full model on the proxy-validation set, clean and under every
        # environment in ``envs``, and each device's re-derived sub-model on the proxy-validation
        # samples of the classes it reported, under its environment (device data never leaves
        # the device; environments are replayed on proxy data, see eclm/pipelines/environments.py).
        def run(state: dict[str, Tensor], updates: list[ModuleUpdate]) -> Evaluation:
            probe = copy.deepcopy(self.model)
            probe.backbone.load_state_dict(state)
            full = probe.extract(probe.full_spec())
            accs = [evaluate(full, self.val_x, self.val_y)[0]] + [self.proxy.accuracy(full, e) for e in envs]
            per_device = {}
            for u in updates:
                acc = self.proxy.accuracy(probe.extract(u.spec), (device_envs or {}).get(u.device_id),
                                          classes.get(u.device_id) or [])
                if acc == acc:  # not NaN: the proxy set has samples of the device's classes
                    per_device[u.device_id] = acc
            return Evaluation(sum(accs) / len(accs), per_device)

        return run

    def _pipeline(self, classes: dict[str, list[int]], envs: tuple[Environment, ...] = (),
                  device_envs: dict[str, Environment | None] | None = None) -> ValidatedMerge:
        m = self.cfg.merge
        # the best accepted accuracy is a floor only on the environments it was measured on
        same_envs = envs == (self.environments if m.validate_environments else ())
        return ValidatedMerge(
            evaluate=self._evaluator(classes, envs, device_envs),
            aggregator=create_aggregator(m.aggregator, m.trim_fraction),
            weighting=m.weighting, max_relative_norm=m.max_relative_norm, tolerance=m.tolerance,
            device_tolerance=m.device_tolerance, min_updates=m.min_updates, server_lr=m.server_lr,
            step_backoff=m.step_backoff, merge_norm_statistics=m.merge_norm_statistics,
            finalize=self._finalize_candidate, reference_accuracy=self.best_val_acc if same_envs else None,
            # a module-sparse upload carries only its classes' rows: the head is always merged by class
            class_rows=self._row_keys if m.head_by_class or self.cfg.adaptation.trainable == "budgeted" else (),
            max_samples=self.cfg.data.samples_per_device[1],
        )

    def merge(self, uploads: list[AttributedUpdate]) -> MergeOutcome:
        """Validate and merge device uploads; a rejected or failed merge leaves the model bit-identical.

        Every upload is admitted on its own first (:mod:`eclm.pipelines.upload_admission`): one
        that is malformed, claims another device or foreign classes, or raises anything while
        being decoded or checked is rejected alone with its reason. With
        ``merge.validate_environments`` candidates are validated on the proxy data clean and
        under every environment devices have reported so far (this round's included).
        """
        admission = admit(uploads, self.model.layer_sizes, self._rebase)
        reported = {u.channel: environment_of(u.update.metrics.environment, u.update.metrics.severity)
                    for u in uploads}
        envs = merged(self.environments, reported.values())
        classes = {u.device_id: list(u.classes or []) for u in admission.updates}
        self._repair = (envs, self._repair_plan(admission.updates))
        if self.cfg.merge.validate_environments:
            args = (classes, envs, reported)
        else:
            args = (classes,)
        cloud_state = self.model.backbone.state_dict()
        updates, rejected = admission.updates, dict(admission.rejected)
        try:
            new_state, report = self._pipeline(*args).run(cloud_state, self.model.layers, updates,
                                                          admission.issued, self._names)
        except Exception as err:  # noqa: BLE001 - find the upload that breaks the merge, merge the rest
            broken = self._breaking_updates(cloud_state, updates)
            if not broken:
                return self._outcome(MergeOutcome(decision="reject", reason=f"merge failed: {err!r}",
                                                  rejected=rejected, version=self.version))
            rejected |= {u.device_id: f"merge failed on this upload: {e}" for u, e in broken}
            kept = [u for u in updates if all(u is not b for b, _ in broken)]
            return self._outcome(self._merge_rest(cloud_state, kept, admission.issued, args, rejected, envs))
        return self._outcome(self._conclude(new_state, report, rejected, envs))

    def seen_accuracy(self) -> float | None:
        """Mean accuracy of the cloud model under the environments seen so far (``None`` before any),
        norm statistics re-estimated per environment (:mod:`eclm.pipelines.environments`)."""
        return self.proxy.mean_accuracy(self.model.extract(self.model.full_spec()), self.environments)

    def _outcome(self, outcome: MergeOutcome) -> MergeOutcome:
        """``outcome`` with the cloud's accuracy on the environments seen so far."""
        seen = self.seen_accuracy()
        return outcome.model_copy(update={"cloud_seen_acc": seen if seen is not None and math.isfinite(seen) else None,
                                          "environments": tuple(environment_name(e) for e in self.environments)})

    def _merge_rest(self, cloud_state, updates, issued, args, rejected, envs) -> MergeOutcome:
        try:
            new_state, report = self._pipeline(*args).run(cloud_state, self.model.layers, updates, issued,
                                                          self._names)
        except Exception as err:  # noqa: BLE001 - the model must stay untouched whatever happens
            return MergeOutcome(decision="reject", reason=f"merge failed: {err!r}", rejected=rejected,
                                version=self.version)
        return self._conclude(new_state, report, rejected, envs)

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
        if new_state is not None:
            self.model.backbone.load_state_dict(new_state)
            self.version += 1
            self._remember_version()
            if report.cloud_acc_after is not None:  # a floor on the environments it was measured on
                same = envs == self.environments or not self.cfg.merge.validate_environments
                self.best_val_acc = max(self.best_val_acc or 0.0, report.cloud_acc_after) if same \
                    else report.cloud_acc_after
            self.environments = envs
        return MergeOutcome(
            decision=report.decision, reason=report.reason, accepted=report.accepted, rejected=report.rejected,
            cloud_acc_before=report.cloud_acc_before, cloud_acc_after=report.cloud_acc_after,
            device_acc_before=report.device_acc_before, device_acc_after=report.device_acc_after,
            server_step=report.server_step, version=self.version,
        )

    def _finalize_candidate(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
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
        if m.repair_epochs:
            envs, plan = self._repair
            gen = torch.Generator().manual_seed(self.cfg.seed + self.version)
            x, y = self.proxy.mixed(envs if m.repair_environments else (), gen)
            sparse = SparsePlan(self.model.layers, self.model.full_spec(), plan) if plan is not None else None
            finetune(probe, x, y, epochs=m.repair_epochs, lr=m.repair_lr, batch_size=self.cfg.adaptation.batch_size * 2,
                     generator=gen, sparse=sparse)
        if not m.merge_norm_statistics:
            recalibrate_norms(probe, self.train_x)
        return probe.state_dict()

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
        return set(self.model.extract(spec).state_dict())

    def ping(self) -> bool:
        return True


def _split_checkpoint(data: bytes) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(backbone state, selector state)`` of a checkpoint written by :meth:`CloudService.snapshot`."""
    state, _, _ = unpack_state(data)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    selector = {k[len("selector."):]: v for k, v in state.items() if k.startswith("selector.")}
    if not backbone or len(backbone) + len(selector) != len(state):
        raise MalformedPayloadError("not an eclm cloud checkpoint (expected backbone.* and selector.* tensors)")
    return backbone, selector


__all__ = ["BudgetTooSmallError", "CloudService"]
