"""One edge device's work, Ray-free: local data stream, importance, adaptation, drift, local swap.

:class:`EdgeService` is a plain class; ``eclm.actors`` turns it into an ``EdgeActor`` with
``ray.remote`` and the ``edge`` resource, and :mod:`eclm.campaign.local` calls it in-process. It
takes and returns the typed messages of :mod:`eclm.campaign.messages`. The device loads or
generates its own data from the config (the driver never ships raw data); weights arrive and
leave as safetensors bytes. With a store directory it writes its state after every change and
comes back from it when restarted (:mod:`eclm.campaign.device_store`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import psutil
import torch

from eclm.campaign.atomic import sha256_bytes, sha256_file, write_atomic
from eclm.campaign.device_store import DeviceStore
from eclm.campaign.messages import (
    DeviceMetrics,
    DeviceSummary,
    DeviceUpdate,
    DriftReport,
    HeldModel,
    InstallReport,
    Lagging,
    StreamPosition,
    SubModelPackage,
    finite_or_none,
)
from eclm.config import PlatformConfig
from eclm.data import ReplayBuffer, build_device_stream, load_dataset
from eclm.modules import (
    CostTable,
    ModularModel,
    ModuleSelector,
    SubModelSpec,
    pack_state,
    rebuild_submodel,
    skeleton,
    unpack_state,
)
from eclm.modules.deltas import apply_wire_delta, to_float32
from eclm.modules.exchange import MalformedPayloadError
from eclm.modules.merge import classifier_keys
from eclm.modules.respec import apply_respec
from eclm.modules.sparse_training import SparsePlan
from eclm.modules.spec import TrainableSpec
from eclm.pipelines.adaptation import (
    evaluate,
    evaluate_own,
    finetune,
    recalibrate_norms,
)
from eclm.pipelines.drift_detection import DriftDetector
from eclm.pipelines.edge_exchange import DeviceExchange
from eclm.pipelines.edge_resources import EdgeResourcesMixin
from eclm.pipelines.edge_state import restore_service, snapshot_service
from eclm.pipelines.split_device import SplitDeviceMixin


def device_skeleton(config: PlatformConfig, num_classes: int) -> ModularModel:
    """The weightless modular model devices rebuild their sub-models from (shareable)."""
    b = config.backbone
    kwargs = dict(b.kwargs, num_classes=num_classes, in_chans=config.data.channels)
    return skeleton({"name": b.name, "kwargs": kwargs}, b.modules_per_layer, config.input_size, b.selector_width,
                    b.selector_dim)


class EdgeService(EdgeResourcesMixin, SplitDeviceMixin):
    """A device: its drifting data, its sub-model and the selector copy it scores modules with.

    Args:
        config: The platform config.
        device_index: Index of this device in ``config.devices``.
        threads: torch threads for this process.
        store_dir: The device's store; its newest snapshot is loaded if there is one.
        resume_at: Load the newest snapshot at or before this stream step (a resumed campaign).
        skeleton_model: A weightless skeleton to share with other devices of this process (it is
            never modified: sub-models are extracted as copies); built here when ``None``.
        selector_model: A selector to share with other devices of this process (all devices load
            the cloud's one selector); built here when ``None``.
    """

    def __init__(self, config: PlatformConfig, device_index: int, threads: int = 1,
                 store_dir: Path | str | None = None, resume_at: int | None = None,
                 skeleton_model: ModularModel | None = None, selector_model: ModuleSelector | None = None) -> None:
        torch.set_num_threads(threads)
        self.cfg = config
        self.device = config.devices[device_index]
        self.name = self.device.name
        data, split = load_dataset(config.data)
        pool = split.devices[device_index]
        self.classes = [int(c) for c in pool.classes]
        self.stream = build_device_stream(data, pool, config.data)
        b = config.backbone
        self.skeleton = skeleton_model or device_skeleton(config, data.num_classes)
        self.selector = selector_model or ModuleSelector(self.skeleton.layer_sizes, config.data.channels,
                                                         b.selector_width, b.selector_dim)
        self.model: torch.nn.Module | None = None
        self.spec: SubModelSpec | None = None
        self.trainable: TrainableSpec | None = None  # what the cloud asked this device to train (None: all)
        self.exchange = DeviceExchange(self.skeleton.layers, config.adaptation.delta_dtype,
                                       config.merge.merge_norm_statistics)
        self.costs: CostTable | None = None
        self.replay = ReplayBuffer(config.adaptation.replay_capacity or 1, seed=config.seed + device_index)
        self.detector = DriftDetector(config.drift.accuracy_drop, config.drift.shift_scale)
        self.memory_overridden = False
        self.version: int | None = None
        self.lagging: Lagging = ()  # modules held from an older version than ``version`` (HeldModel.lagging)
        self.resources = self._initial_resources()
        self.rounds = 0
        self.store = DeviceStore(Path(store_dir)) if store_dir is not None else None
        if self.store is not None:
            loaded = self.store.load(resume_at)
            if loaded is not None:
                restore_service(self, *loaded)
            if self._selector_file().is_file():  # the cloud's selector, as last received on this node
                self.load_selector(self._selector_file().read_bytes())

    def _save(self) -> None:
        if self.store is not None:
            self.store.save(*snapshot_service(self))

    # ------------------------------------------------------------------ data and drift
    def advance(self, steps: int = 1) -> StreamPosition:
        """Move the local data stream ``steps`` steps forward (drift)."""
        for _ in range(steps):
            self.stream.step()
        env = self.stream.environment
        self._save()
        return StreamPosition(device=self.name, step=self.stream.step_index, corruption=env.corruption,
                              severity=env.severity, classes=tuple(env.classes or self.classes))

    def load_selector(self, payload: bytes) -> None:
        """Take the cloud's selector (skipped when it is the one loaded already); with a store it is
        also kept on disk next to the device stores, so a restarted device scores drift with it."""
        digest = sha256_bytes(payload)
        if getattr(self.selector, "eclm_digest", None) == digest:
            return
        state, _, _ = unpack_state(payload)
        self.selector.load_state_dict(state)
        self.selector.eclm_digest = digest
        if self.store is not None:
            path = self._selector_file()
            if not path.is_file() or sha256_file(path) != digest:
                write_atomic(path, payload)

    def _selector_file(self) -> Path:
        return self.store.root.parent / "selector.safetensors"

    @torch.no_grad()
    def importance(self) -> list[list[float]]:
        """Mean selector probabilities over the local training data (the L x N summary)."""
        self.selector.eval()
        probs = self.selector.probabilities(self.stream.train_set().images)
        return [p.mean(0).tolist() for p in probs]

    def drift(self) -> DriftReport:
        """Drift of the incoming data relative to the state after the last adaptation."""
        train = self.stream.train_set()
        acc = evaluate(self.model, train.images, train.labels)[0] if self.model is not None else None
        score = self.detector.score(acc, self.importance())
        return DriftReport(device=self.name, labelled=score.labelled, label_free=score.label_free,
                           combined=score.combined, accuracy_on_new=finite_or_none(acc))

    def summary(self, selector_payload: bytes | None = None) -> DeviceSummary:
        """What the cloud needs to derive this device's sub-model; never raw data."""
        if selector_payload is not None:
            self.load_selector(selector_payload)
        held = acc = prev_acc = prev_own = None
        if self.model is not None and self.spec is not None and self.version is not None:
            held = HeldModel(spec=self.spec, version=self.version, lagging=self.lagging)
            test, prev = self.stream.test_set(), self.stream.previous_test_set()
            acc = finite_or_none(evaluate(self.model, test.images, test.labels)[0])
            if prev is not None:
                prev_acc, _, prev_own = map(finite_or_none, evaluate_own(self.model, prev.images, prev.labels, self.classes))
        return DeviceSummary(device=self.name, importance=self.importance(), resources=self.profile(),
                             num_samples=self.stream.local_size, classes=tuple(self.classes), held=held,
                             selector_digest=getattr(self.selector, "eclm_digest", None),
                             held_accuracy=acc, held_previous_accuracy=prev_acc, held_previous_accuracy_own=prev_own)

    # ------------------------------------------------------------------ sub-model
    def install(self, package: SubModelPackage, costs: dict | None = None) -> InstallReport:
        """Install a package from the cloud (``payload=None``: keep the held sub-model).

        A payload of kind ``delta`` carries the cloud's change since the version held here (all
        learned weights, or only the modules and rows that changed) and is added to the locally
        adapted weights (see :mod:`eclm.modules.deltas`); one of kind ``respec`` does the same for
        the modules the held and the new sub-model share and brings the new modules whole
        (:mod:`eclm.modules.respec`). The package also says what the device
        trains next (``trainable``; ``None``: everything) and which modules it now holds from older
        versions (``lagging``, reported back with the next summary).

        Raises:
            MalformedPayloadError: If the payload does not decode or does not match the spec.
            ValueError: If no payload is sent but the device does not hold that spec, or a delta's
                base is not the version held here.
        """
        spec = package.spec
        if package.payload is None:
            if self.model is None or self.spec != spec:
                raise ValueError(f"device {self.name}: no weights sent and the held sub-model is not {spec.to_json()}")
            self.version, self.trainable, self.lagging = package.version, package.trainable, package.lagging
            self._save()
            return InstallReport(device=self.name, params=self._params(), modules=spec.num_modules(), kept=True)
        state, payload_spec, meta = unpack_state(package.payload)
        if payload_spec != spec:
            raise MalformedPayloadError("payload spec differs from the announced spec")
        kind = meta.get("kind")
        if kind in ("delta", "respec"):  # the cloud's change since the version held here
            if self.model is None or (kind == "delta" and self.spec != spec) or self.version != meta.get("base_version"):
                raise ValueError(f"device {self.name}: got a {kind} against version {meta.get('base_version')} "
                                 f"but holds version {self.version} of {self.spec.to_json() if self.spec else None}")
            # keep_local: the change lands on the adapted weights; else on the version received last
            base = self.model.state_dict() if self.cfg.adaptation.keep_local else self.exchange.received
            rows = classifier_keys(self.model)
            if kind == "delta":
                self.model.load_state_dict(apply_wire_delta(base, state, meta, self.skeleton.layers, spec, rows))
            else:  # another sub-model: the modules kept here plus the change, the new ones whole
                template = self.skeleton.extract(spec).state_dict()
                self.model = rebuild_submodel(self.skeleton, spec, apply_respec(
                    base, self.spec, spec, state, meta, self.skeleton.layers, rows, template))
                self.exchange.reset()
        else:
            self.model = rebuild_submodel(self.skeleton, spec, to_float32(state))
            self.exchange.reset()
        if not self.cfg.adaptation.keep_local:
            self.exchange.received = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.spec, self.version, self.trainable = spec, package.version, package.trainable
        self.lagging = package.lagging
        if costs is not None:
            self.costs = CostTable.from_dict(costs)
        if self.cfg.adaptation.recalibrate_norms:
            recalibrate_norms(self.model, self.stream.train_set().images)
        self._save()
        return InstallReport(device=self.name, params=self._params(), modules=spec.num_modules())

    def _params(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0

    # ------------------------------------------------------------------ adaptation
    def adapt(self) -> DeviceUpdate:
        """Fine-tune on local data; return the update (safetensors bytes) and the metrics.

        With ``adaptation.exchange: delta`` the update is this cycle's change of what the device
        trained (``after - before``; module-sparse after module-sparse training); with ``weights``
        it is the adapted sub-model itself.

        Raises:
            RuntimeError: If no sub-model is installed.
        """
        if self.model is None or self.spec is None:
            raise RuntimeError(f"device {self.name} has no sub-model installed")
        a = self.cfg.adaptation
        train, test, prev = self.stream.train_set(), self.stream.test_set(), self.stream.previous_test_set()
        before = evaluate_own(self.model, test.images, test.labels, self.classes)
        prev_before = evaluate(self.model, prev.images, prev.labels)[0] if prev is not None else None
        rss_before = psutil.Process().memory_info().rss
        plan = self.trainable or TrainableSpec.dense(self.spec)
        row_keys = classifier_keys(self.model)
        state = self.model.state_dict()
        start = {k: state[k].detach().clone() for k in self.exchange.keys(state, self.spec, plan, row_keys)}
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.rounds)
        stats = finetune(self.model, train.images, train.labels, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                         momentum=a.momentum, replay=self.replay if a.replay_capacity else None,
                         replay_ratio=a.replay_ratio, generator=gen,
                         local_classes=self.classes if a.restrict_to_local_classes else None,
                         sparse=SparsePlan(self.skeleton.layers, self.spec, plan),
                         cache_limit=self.cache_headroom(), max_grad_norm=a.max_grad_norm)
        rss_delta = psutil.Process().memory_info().rss - rss_before
        if a.recalibrate_norms:  # training-mode batches mixed replayed environments into the stats
            recalibrate_norms(self.model, train.images)
        after = evaluate_own(self.model, test.images, test.labels, self.classes)
        prev_after = (evaluate_own(self.model, prev.images, prev.labels, self.classes)
                      if prev is not None else (None, None, None))
        importance = self.importance()
        self.detector.update_reference(evaluate(self.model, train.images, train.labels)[0], importance)
        self.rounds += 1
        payload = self._payload(plan, start, row_keys)
        metrics = self._metrics(before, after, prev_before, prev_after, stats, plan, rss_delta)
        self._save()
        return DeviceUpdate(device=self.name, payload=payload, importance=importance, num_samples=len(train.images),
                            classes=tuple(self.classes), metrics=metrics)

    def _payload(self, plan: TrainableSpec, start: dict, row_keys: list[str]) -> bytes:
        """The upload: this cycle's change (``exchange: delta``) or the adapted weights."""
        meta = {"device": self.name, "round": self.rounds, "base_version": self.version}
        compression = self.cfg.adaptation.wire_compression
        if self.cfg.adaptation.exchange != "delta":
            return pack_state(self.model.state_dict(), self.spec, meta, compression)
        # this cycle's change only; the cloud re-bases it on its current slices
        wire, header = self.exchange.upload(self.model.state_dict(), start, self.spec, plan, row_keys, self.classes)
        return pack_state(wire, self.spec, meta | header, compression)

    def _metrics(self, before, after, prev_before, prev_after, stats, plan: TrainableSpec,
                 rss_delta: int) -> DeviceMetrics:
        """The cycle's metrics; ``before``/``after``/``prev_after`` are ``(accuracy, loss, own-class
        accuracy)`` (``None`` entries without a previous environment)."""
        cost = self.costs.total(self.spec) if self.costs else {}
        memory = trained = None
        if self.costs is not None:  # the same memory model for dense and module-sparse training
            model = self._memory()
            memory, trained = model.total(self.costs, self.spec, plan), model.trainable_params(self.costs, self.spec, plan)
        forgetting = (prev_before - prev_after[0]) if prev_before is not None else None
        return DeviceMetrics(
            acc_before=finite_or_none(before[0]), acc_after=finite_or_none(after[0]), acc_before_own=finite_or_none(before[2]),
            acc_after_own=finite_or_none(after[2]), loss_before=finite_or_none(before[1]), loss_after=finite_or_none(after[1]),
            prev_acc_before=finite_or_none(prev_before), prev_acc_after=finite_or_none(prev_after[0]),
            prev_acc_after_own=finite_or_none(prev_after[2]), forgetting=finite_or_none(forgetting), train_seconds=stats.seconds, seconds_per_batch=stats.seconds_per_batch,
            batches=stats.batches, clipped_steps=stats.clipped, max_grad_norm_seen=finite_or_none(stats.max_grad_norm_seen),
            params=cost.get("params"), flops=cost.get("flops"),
            train_memory_estimate=memory, trainable=self.trainable, trained_params=trained, rss_delta=rss_delta,
            environment=self.stream.environment.corruption, severity=self.stream.environment.severity)

    def evaluate(self) -> DeviceMetrics:
        """Accuracy of the held model on the current and the previous environment, no training
        (what a device that does not adapt measures).

        Raises:
            RuntimeError: If no sub-model is installed.
        """
        if self.model is None:
            raise RuntimeError(f"device {self.name} has no sub-model installed")
        test, prev = self.stream.test_set(), self.stream.previous_test_set()
        acc, loss, own = evaluate_own(self.model, test.images, test.labels, self.classes)
        prev_acc, _, prev_own = (evaluate_own(self.model, prev.images, prev.labels, self.classes)
                                 if prev is not None else (None, None, None))
        cost = self.costs.total(self.spec) if self.costs else {}
        return DeviceMetrics(acc_before=finite_or_none(acc), acc_after=finite_or_none(acc), acc_before_own=finite_or_none(own),
                             acc_after_own=finite_or_none(own), loss_before=finite_or_none(loss), loss_after=finite_or_none(loss),
                             prev_acc_before=finite_or_none(prev_acc), prev_acc_after=finite_or_none(prev_acc),
                             prev_acc_after_own=finite_or_none(prev_own), forgetting=0.0 if prev is not None else None,
                             params=cost.get("params"), flops=cost.get("flops"),
                             environment=self.stream.environment.corruption,
                             severity=self.stream.environment.severity)

    def snapshot_model(self) -> bytes | None:
        """Current sub-model weights (safetensors), for tests, serving and inspection."""
        return None if self.model is None else pack_state(copy.deepcopy(self.model).state_dict(), self.spec)

    def ping(self) -> str:
        return self.name

    def timestamp(self) -> float:
        return time.time()
