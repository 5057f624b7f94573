"""The cloud's work, Ray-free: offline stage, per-device derivation, validated merge, versions.

:class:`CloudService` is a plain class; ``eclm.actors`` turns it into the ``CloudActor`` with
``ray.remote`` and the ``cloud`` resource, and :mod:`eclm.campaign.local` calls it in-process.
It takes and returns the typed messages of :mod:`eclm.campaign.messages`; weights travel as
safetensors bytes. It keeps no state about devices between calls: the spec issued to a device
comes back with its update, so a cloud restored from a :class:`CloudSnapshot` after a crash
merges exactly as the one that died would have.
"""

from __future__ import annotations

import hashlib
import time

import torch
from torch import Tensor

from eclm.campaign.messages import (
    CloudInfo,
    CloudSnapshot,
    Delivery,
    DeviceSummary,
    EpochRecord,
    HeldModel,
    Lagging,
    Resources,
    SubModelPackage,
)
from eclm.config import PlatformConfig
from eclm.data import load_dataset
from eclm.modules import (
    BudgetTooSmallError,
    DeviceProfile,
    ModularModel,
    SubModelSpec,
    derive_submodel,
    pack_state,
    unpack_state,
)
from eclm.modules.codec import encode
from eclm.modules.deltas import first_delivery, learned_keys, sparse_download
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import classifier_keys, tensor_owner
from eclm.modules.offline import OfflineTraining
from eclm.modules.respec import respec_download
from eclm.modules.sparse_delta import Parts, put, take
from eclm.modules.spec import TrainableSpec
from eclm.modules.submodel_cache import SubModelCache
from eclm.modules.trainable import TrainingMemory, derive_trainable
from eclm.pipelines.adaptation import effective_batch, evaluate, training_memory_model
from eclm.pipelines.cloud_merge import CloudMergeMixin
from eclm.pipelines.defences.quarantine import Quarantine
from eclm.pipelines.environments import Environment, ProxyEnvironments, environment_of, merged
from eclm.pipelines.profiler import budget_from_resources
from eclm.pipelines.split_service import SplitCloudMixin
from eclm.preflight import cloud_model


class CloudService(CloudMergeMixin, SplitCloudMixin):
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
        # The classes each device holds as the cloud knows them (the split follows from the config);
        # an update claiming other classes is rejected (docs/security.md).
        self.known_classes = {d.name: set(p.classes) for d, p in zip(config.devices, split.devices, strict=True)}
        self.best_val_correct: Tensor | None = None  # per-sample correctness of the best accepted version
        self._version_correct: tuple[int, dict] | None = None  # the current version's, per environment
        self._split_uploads: set[str] = set()  # devices of the last split round: their uploads are one
        self.train_x, self.train_y = cloud.train.images, cloud.train.labels
        self.val_x, self.val_y = cloud.val.images, cloud.val.labels
        self.num_classes = data.num_classes
        # The same builder the pre-flight budget checks use, so the two cannot disagree.
        self.model: ModularModel = cloud_model(config, self.num_classes).eval()
        self.version = 0
        self.best_val_acc: float | None = None
        self.proxy = ProxyEnvironments(self.train_x, self.train_y, self.val_x, self.val_y, config.seed,
                                       calibration_samples=config.merge.calibration_samples)
        self.environments: tuple[Environment, ...] = ()  # reported in the rounds of accepted merges (docs/security.md)
        self.quarantine = Quarantine(config.merge.screen.quarantine_uploads,  # devices caught on wrong labels
                                     fresh=config.merge.screen.fresh_after_rejection)
        self._repair: tuple[tuple[Environment, ...], TrainableSpec | None] = ((), None)  # set by merge()
        self._versions: dict[int, dict[str, Tensor]] = {}  # recent versions, to ship deltas against
        self._version_subs: dict[int, SubModelCache] = {}  # their sub-models, extracted once per spec
        # whole sub-models as shipped, packed once per spec of the current version's sub-model cache
        self._whole_payloads: dict[SubModelSpec, bytes] = {}
        self._whole_payloads_of: SubModelCache | None = None
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
            self.environments = ()
            self._forget_evaluations()
            self.best_val_acc = self.validation_accuracy()
            self.best_val_correct = None
            self._remember_best_predictions()
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
        meta = {"model_id": self.model.model_id, "version": self.version,
                "environments": [list(e) for e in self.environments], "quarantine": self.quarantine.to_meta()}
        return CloudSnapshot(version=self.version, weights=pack_state(state, meta=meta), best_val_acc=self.best_val_acc)

    def restore(self, snapshot: CloudSnapshot) -> int:
        """Become the cloud of ``snapshot`` (weights, version, kept versions, best accuracy, the
        environments seen and the quarantine).

        Returns:
            The restored version.

        Raises:
            MalformedPayloadError: If the weights do not decode or do not fit the model.
        """
        backbone, selector = _split_checkpoint(snapshot.weights)
        self.model.backbone.load_state_dict(backbone)
        self.model.selector.load_state_dict(selector)
        self._forget_evaluations()
        self.version, self.best_val_acc, self._unchanged_merges = snapshot.version, snapshot.best_val_acc, 0
        meta = unpack_state(snapshot.weights)[2]
        self.environments = merged((), (environment_of(e[0], e[1]) for e in meta.get("environments") or []))
        self.quarantine.load(meta.get("quarantine"))
        self._versions = {v: _split_checkpoint(b)[0] for v, b in sorted(snapshot.kept_versions.items())}
        self._remember_version()
        self.best_val_correct = None  # the paired test's reference: the restored version's predictions
        self._remember_best_predictions()
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
        nothing is shipped: it keeps its locally adapted weights (unless its last upload was
        rejected by a check on its own classes or refused by the quarantine: then it gets the
        full sub-model, :mod:`~eclm.pipelines.defences.quarantine`). If it holds the spec from an
        older version and ``adaptation.exchange`` is ``delta``, it gets the cloud's change since
        that version, carrying only the modules and rows that changed (it adds it to its adapted
        weights; a module changed by less than ``adaptation.download_min_change`` waits, and the
        package lists it as lagging, see :meth:`_package`); if it holds another spec, the change of the modules both keep plus the new
        modules whole (:mod:`eclm.modules.respec`); otherwise the full sub-model. With
        ``adaptation.trainable: budgeted`` the package also names the modules the device trains
        (:func:`~eclm.modules.trainable.derive_trainable`).

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
        held, delivery = summary.held, "kept"
        if self.quarantine.take_refresh(summary.device):
            held, delivery = None, "refresh"  # rejected on its own classes or refused: fresh weights replace its own
        payload, lagging = None, held.lagging if held is not None else ()
        if held is None or held.spec != spec or held.version != self.version:
            payload, lagging, kind = self._package(summary.device, spec, held)
            delivery = delivery if delivery == "refresh" else kind
        limits = budget.limits() | ({"train_memory": budget.max_train_memory} if budget.max_train_memory else {})
        return SubModelPackage(device=summary.device, spec=spec, payload=payload, version=self.version,
                               budget=limits, cost=cost, solve_seconds=solve, trainable=trainable, lagging=lagging,
                               delivery=delivery)

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

    def _package(self, device: str, spec: SubModelSpec, held: HeldModel | None) -> tuple[bytes, Lagging, Delivery]:
        """What a device holding ``held`` needs for ``spec`` (see :meth:`derive`), the modules it
        then holds from older versions, and what the payload is (:data:`~eclm.campaign.messages.Delivery`).

        With ``adaptation.exchange: delta`` and the held version still kept, a device that holds
        ``spec`` gets the change since the version it holds of each module, without the modules
        whose change is below ``adaptation.download_min_change`` (they lag), and one that holds
        another spec of this model a respec payload (:mod:`eclm.modules.respec`); otherwise the
        full sub-model.
        """
        a = self.cfg.adaptation
        base = self._versions.get(held.version) if held is not None and a.exchange == "delta" else None
        if base is None or not self._same_model(held.spec):
            return self._whole_payload(spec), (), self._why_whole(held)
        meta = {"version": self.version, "device": device, "base_version": held.version}
        current = self._submodels(self.version).state_dict(spec)
        old, bases = self._held_state(held)
        if held.spec == spec:
            # a module held from the oldest kept version goes now: that version is dropped at the next merge
            oldest = min(self._versions) if len(self._versions) >= self.cfg.merge.keep_versions else None
            expiring = {(i, m) for i, g in enumerate(spec.groups) for m in g if bases.get((i, m), held.version) == oldest}
            diffs, parts, lagging = sparse_download(current, old, self.model.layers, spec, self._row_keys,
                                                    min_change=a.download_min_change, force=expiring)
            wire, _ = encode(diffs, a.delta_dtype)
            held_from = tuple((i, m, bases.get((i, m), held.version)) for i, m in lagging)
            payload = pack_state(wire, spec, meta | {"kind": "delta"} | parts.to_meta(), a.wire_compression)
            return payload, held_from, "delta"
        wire, parts_meta = respec_download(current, old, self.model.layers, spec, held.spec, self._row_keys,
                                           delta_dtype=a.delta_dtype, first_dtype=a.first_delivery_dtype)
        return pack_state(wire, spec, meta | parts_meta, a.wire_compression), (), "respec"

    def _whole_payload(self, spec: SubModelSpec) -> bytes:
        """The whole sub-model ``spec`` at the current version, as shipped (``first_delivery_dtype``,
        ``wire_compression``). It names no device, so it is packed once per version and spec: the
        devices of a derivation round that get the same spec get the same bytes. The payloads live
        as long as the version's sub-model cache (:meth:`_submodels`: a new version, a restore or
        live weights never remembered each get a new one), the first :data:`_WHOLE_PAYLOADS` specs."""
        a = self.cfg.adaptation
        subs = self._submodels(self.version)
        if subs is not self._whole_payloads_of:
            self._whole_payloads, self._whole_payloads_of = {}, subs
        payload = self._whole_payloads.get(spec)
        if payload is None:
            payload = pack_state(first_delivery(subs.state_dict(spec), a.first_delivery_dtype), spec,
                                 {"version": self.version}, a.wire_compression)
            if len(self._whole_payloads) < _WHOLE_PAYLOADS:
                self._whole_payloads[spec] = payload
        return payload

    def _why_whole(self, held: HeldModel | None) -> Delivery:
        """Why a device holding ``held`` gets its whole sub-model (see :meth:`_package`)."""
        if held is None:
            return "first"
        if self.cfg.adaptation.exchange != "delta":
            return "weights"
        return "expired" if held.version not in self._versions else "other_model"

    def _held_state(self, held: HeldModel) -> tuple[dict[str, Tensor], dict[tuple[int, int], int]]:
        """The cloud's weights of what a device holds: ``held.spec`` at ``held.version``, with its
        lagging modules at the versions it holds them from; and those versions per module.

        A lagging module whose version is no longer kept counts as ``held.version`` (its skipped
        change, below ``adaptation.download_min_change``, is then not delivered).
        """
        state = self._submodels(held.version).state_dict(held.spec)
        bases = {(i, m): v for i, m, v in held.lagging
                 if v in self._versions and i < len(held.spec.groups) and m in held.spec.groups[i]}
        layers = self.model.layers
        keys = [k for k in learned_keys(state) if tensor_owner(layers, k) is not None and k not in self._row_keys]
        for version in sorted(set(bases.values())):
            parts = Parts(groups=tuple(tuple(m for (j, m), v in bases.items() if j == i and v == version)
                                       for i in range(len(held.spec.groups))))
            older = take(self._submodels(version).state_dict(held.spec), layers, held.spec, parts, keys)
            state = put(state, older, layers, held.spec, parts, differences=set())
        return state, bases

    def _submodels(self, version: int) -> SubModelCache:
        """Sub-models of a kept version (the current one included, as remembered), extracted once per
        spec: the devices of a derivation round that share a spec share its extraction (a current
        version that was never remembered: the live weights, not cached)."""
        state = self._versions.get(version)
        if state is None:
            return SubModelCache(self.model)
        cache = self._version_subs.get(version)
        if cache is None or cache.state is not state:  # versions are re-remembered after a restore
            cache = self._version_subs[version] = SubModelCache(self.model, state, size=8,
                                                                max_bytes=_VERSION_CACHE_BYTES // self.cfg.merge.keep_versions)
        for old in set(self._version_subs) - set(self._versions):
            del self._version_subs[old]
        return cache

    def _same_model(self, spec: SubModelSpec) -> bool:
        """Whether ``spec`` is a sub-model of this cloud model (a device may hold one of another)."""
        try:
            self.model.check_spec(spec)
        except ValueError:
            return False
        return True

    def _remember_version(self) -> None:
        """Keep the current weights (the last ``merge.keep_versions`` versions) to diff against."""
        self._versions[self.version] = {k: v.detach().clone() for k, v in self.model.backbone.state_dict().items()}
        for old in sorted(self._versions)[: -self.cfg.merge.keep_versions]:
            del self._versions[old]

    @property
    def _row_keys(self) -> tuple[str, ...]:
        """The classifier's tensors (rows = classes)."""
        return tuple(classifier_keys(self.model.backbone))

    def ping(self) -> bool:
        return True


#: Bytes of extracted sub-models kept over all kept versions together (shared equally among them).
_VERSION_CACHE_BYTES = 256 * 2**20
#: Packed whole sub-models kept (per spec of the current version; a payload is about the
#: sub-model's float16 size).
_WHOLE_PAYLOADS = 8


def _split_checkpoint(data: bytes) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(backbone state, selector state)`` of a checkpoint written by :meth:`CloudService.snapshot`."""
    state, _, _ = unpack_state(data)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    selector = {k[len("selector."):]: v for k, v in state.items() if k.startswith("selector.")}
    if not backbone or len(backbone) + len(selector) != len(state):
        raise MalformedPayloadError("not an eclm cloud checkpoint (expected backbone.* and selector.* tensors)")
    return backbone, selector


__all__ = ["BudgetTooSmallError", "CloudService"]
