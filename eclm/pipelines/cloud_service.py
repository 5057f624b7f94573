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
    pack_state,
    unpack_state,
)
from eclm.modules.deltas import WIRE_DTYPES, apply_delta, state_delta
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import merge_module_updates
from eclm.modules.offline import OfflineTraining
from eclm.pipelines.adaptation import evaluate, finetune, recalibrate_norms
from eclm.pipelines.aggregators import create_aggregator
from eclm.pipelines.profiler import budget_from_resources
from eclm.pipelines.split_service import SplitCloudMixin
from eclm.pipelines.upload_admission import admit
from eclm.pipelines.validated_merge import Evaluation, ValidatedMerge
from eclm.preflight import cloud_model


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
        # The same builder the pre-flight budget checks use, so the two cannot disagree.
        self.model: ModularModel = cloud_model(config, self.num_classes).eval()
        self.version = 0
        self.best_val_acc: float | None = None
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

    def pretrain(self) -> list[EpochRecord]:
        """Run the whole offline stage on the proxy data; the result is version 0."""
        total = self.pretrain_begin()
        return [self.pretrain_epoch() for _ in range(total)]

    def pretrain_begin(self) -> int:
        """Start the offline stage; returns its number of epochs (run them with :meth:`pretrain_epoch`)."""
        self._offline = OfflineTraining(self.model, self.train_x, self.train_y, self.val_x, self.val_y,
                                        self.cfg.offline, num_classes=self.num_classes)
        return self._offline.total

    def pretrain_epoch(self) -> EpochRecord:
        """One epoch of the offline stage; after the last one the model is version 0.

        Raises:
            RuntimeError: If no offline stage was begun or it is over.
        """
        run = getattr(self, "_offline", None)
        metrics = run.next_epoch() if run is not None else None
        if metrics is None:
            raise RuntimeError("no offline stage in progress (call pretrain_begin first)")
        if run.done == run.total:
            self._offline = None
            self._versions = {}
            self._remember_version()
            self.best_val_acc = self.validation_accuracy()
        return EpochRecord(**vars(metrics))

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
        weights = pack_state(state, meta={"model_id": self.model.model_id, "version": self.version})
        return CloudSnapshot(version=self.version, weights=weights, best_val_acc=self.best_val_acc)

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
        )

    def derive(self, summary: DeviceSummary) -> SubModelPackage:
        """Derive and package the sub-model for one device.

        If the device already holds exactly the derived spec from the current cloud version,
        nothing is shipped: it keeps its locally adapted weights. If it holds the spec from an
        older version and ``adaptation.exchange`` is ``delta``, it gets the cloud's change since
        that version (it adds it to its adapted weights); otherwise the full sub-model.

        Raises:
            BudgetTooSmallError: If the device cannot hold even the minimal sub-model.
        """
        budget = self.budget(summary.device, summary.resources)
        start = time.perf_counter()
        spec = derive_submodel(self.model, [list(r) for r in summary.importance], budget)
        solve = time.perf_counter() - start
        held = summary.held
        same_spec = held is not None and held.spec == spec
        payload = None
        if not (same_spec and held.version == self.version):
            payload = self._package(summary.device, spec, held.version if same_spec else None)
        return SubModelPackage(device=summary.device, spec=spec, payload=payload, version=self.version,
                               budget=budget.limits(), cost=self.model.costs().total(spec), solve_seconds=solve)

    def _package(self, device: str, spec: SubModelSpec, held_version: int | None) -> bytes:
        """The full sub-model, or the change since ``held_version`` when a delta can be made."""
        meta = {"version": self.version, "device": device}
        current = self.model.extract(spec).state_dict()
        base = self._versions.get(held_version) if held_version is not None else None
        if self.cfg.adaptation.exchange == "delta" and base is not None:
            delta = state_delta(current, self.model.extract(spec, base).state_dict(), statistics=False,
                                dtype=WIRE_DTYPES[self.cfg.adaptation.delta_dtype])
            return pack_state(delta, spec, meta | {"kind": "delta", "base_version": held_version})
        return pack_state(current, spec, meta)

    def _remember_version(self) -> None:
        """Keep the current weights (the last ``merge.keep_versions`` versions) to diff against."""
        self._versions[self.version] = {k: v.detach().clone() for k, v in self.model.backbone.state_dict().items()}
        for old in sorted(self._versions)[: -self.cfg.merge.keep_versions]:
            del self._versions[old]

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
            overall = evaluate(probe.extract(probe.full_spec()), self.val_x, self.val_y)[0]
            per_device = {}
            for u in updates:
                mask = torch.isin(self.val_y, torch.tensor(classes.get(u.device_id) or [], dtype=self.val_y.dtype))
                if mask.sum() > 0:
                    per_device[u.device_id] = evaluate(probe.extract(u.spec), self.val_x[mask], self.val_y[mask])[0]
            return Evaluation(overall, per_device)

        return run

    def _pipeline(self, classes: dict[str, list[int]]) -> ValidatedMerge:
        m = self.cfg.merge
        return ValidatedMerge(
            evaluate=self._evaluator(classes), aggregator=create_aggregator(m.aggregator, m.trim_fraction),
            weighting=m.weighting, max_relative_norm=m.max_relative_norm, tolerance=m.tolerance,
            device_tolerance=m.device_tolerance, min_updates=m.min_updates, server_lr=m.server_lr,
            step_backoff=m.step_backoff, merge_norm_statistics=m.merge_norm_statistics,
            finalize=self._finalize_candidate, reference_accuracy=self.best_val_acc,
            class_rows=tuple(classifier_keys(self.model.backbone)) if m.head_by_class else (),
            max_samples=self.cfg.data.samples_per_device[1],
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
        try:
            new_state, report = self._pipeline(classes).run(cloud_state, self.model.layers, updates,
                                                            admission.issued, self._names)
        except Exception as err:  # noqa: BLE001 - find the upload that breaks the merge, merge the rest
            broken = self._breaking_updates(cloud_state, updates)
            if not broken:
                return MergeOutcome(decision="reject", reason=f"merge failed: {err!r}", rejected=rejected,
                                    version=self.version)
            rejected |= {u.device_id: f"merge failed on this upload: {e}" for u, e in broken}
            kept = [u for u in updates if all(u is not b for b, _ in broken)]
            return self._merge_rest(cloud_state, kept, admission.issued, classes, rejected)
        return self._conclude(new_state, report, rejected)

    def _merge_rest(self, cloud_state, updates, issued, classes, rejected) -> MergeOutcome:
        try:
            new_state, report = self._pipeline(classes).run(cloud_state, self.model.layers, updates, issued,
                                                            self._names)
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
        return MergeOutcome(
            decision=report.decision, reason=report.reason, accepted=report.accepted, rejected=report.rejected,
            cloud_acc_before=report.cloud_acc_before, cloud_acc_after=report.cloud_acc_after,
            device_acc_before=report.device_acc_before, device_acc_after=report.device_acc_after,
            server_step=report.server_step, version=self.version,
        )

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
