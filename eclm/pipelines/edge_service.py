"""One edge device's work, Ray-free: local data stream, importance, adaptation, drift, local swap.

:class:`EdgeService` is a plain class; ``eclm.actors`` turns it into an ``EdgeActor`` with
``ray.remote`` and the ``edge`` resource. The device loads or generates its own data from the
config (the driver never ships raw data); weights arrive and leave as safetensors bytes.
"""

from __future__ import annotations

import copy
import time

import psutil
import torch

from eclm.config import PlatformConfig
from eclm.data import ReplayBuffer, build_device_stream, build_source, build_split
from eclm.modules import (
    CostTable,
    DeviceProfile,
    ModuleSelector,
    SubModelSpec,
    narrow,
    pack_state,
    rebuild_submodel,
    shrink_submodel,
    skeleton,
    unpack_state,
)
from eclm.modules.deltas import WIRE_DTYPES, apply_delta, state_delta
from eclm.modules.exchange import MalformedPayloadError
from eclm.pipelines.adaptation import evaluate, finetune, recalibrate_norms, training_memory_bytes
from eclm.pipelines.drift_detection import DriftDetector
from eclm.pipelines.profiler import budget_from_resources, measure_resources


class EdgeService:
    """A device: its drifting data, its sub-model and the selector copy it scores modules with.

    Args:
        config_json: The platform config as JSON.
        device_index: Index of this device in ``config.devices``.
        threads: torch threads for this process.
        stream_state: Optional :meth:`DeviceStream.state_dict` to resume from (actor restart).
    """

    def __init__(self, config_json: str, device_index: int, threads: int = 1, stream_state: dict | None = None) -> None:
        torch.set_num_threads(threads)
        self.cfg = PlatformConfig.model_validate_json(config_json)
        self.device = self.cfg.devices[device_index]
        self.name = self.device.name
        data = build_source(self.cfg.data).load()
        pool = build_split(data, self.cfg.data).devices[device_index]
        self.classes = list(pool.classes)
        self.stream = build_device_stream(data, pool, self.cfg.data)
        if stream_state:
            self.stream.load_state_dict(stream_state)
        b = self.cfg.backbone
        kwargs = dict(b.kwargs, num_classes=data.num_classes, in_chans=self.cfg.data.channels)
        self.skeleton = skeleton({"name": b.name, "kwargs": kwargs}, b.modules_per_layer, self.cfg.input_size,
                                 b.selector_width, b.selector_dim)
        self.selector = ModuleSelector(self.skeleton.layer_sizes, self.cfg.data.channels, b.selector_width, b.selector_dim)
        self.model: torch.nn.Module | None = None
        self.spec: SubModelSpec | None = None
        self.costs: CostTable | None = None
        self.replay = ReplayBuffer(self.cfg.adaptation.replay_capacity, seed=self.cfg.seed + device_index)
        self.detector = DriftDetector(self.cfg.drift.accuracy_drop, self.cfg.drift.shift_scale)
        self._memory_overridden = False
        self.version: int | None = None
        self.resources = self._initial_resources()
        self.rounds = 0

    # ------------------------------------------------------------------ resources
    def _initial_resources(self) -> dict:
        d = self.device
        res = {"memory_mb": d.memory_mb, "gflops": d.gflops, "bandwidth_mbps": d.bandwidth_mbps,
               "params_fraction": d.params_fraction,
               "latency_s": d.latency_ms / 1000 if d.latency_ms is not None else None}
        if d.measure:
            measured = measure_resources()
            res = {k: (v if v is not None else measured.get(k)) for k, v in res.items()}
        return res

    def profile(self) -> dict:
        """The device's current resources: configured values, or re-measured memory for a device
        with ``measure: true`` and no configured memory (available memory changes over time)."""
        if self.device.measure and self.device.memory_mb is None and not self._memory_overridden:
            self.resources["memory_mb"] = measure_resources(compute=False)["memory_mb"]
        return dict(self.resources)

    def echo_size(self, data: bytes) -> int:
        """Receive ``data`` and return its size (the driver times this to measure the link)."""
        return len(data)

    def holds_model(self) -> bool:
        return self.model is not None

    def set_resources(self, **changes: float) -> dict:
        """Change resources (emulates a device losing memory/compute/bandwidth).

        Raises:
            ValueError: For an unknown resource name or a non-positive value.
        """
        unknown = set(changes) - set(self.resources)
        if unknown:
            raise ValueError(f"unknown resources {sorted(unknown)}; known: {sorted(self.resources)}")
        bad = {k: v for k, v in changes.items() if v is not None and not v > 0}
        if bad:
            raise ValueError(f"resources must be positive, got {bad}")
        self._memory_overridden = self._memory_overridden or "memory_mb" in changes
        self.resources.update(changes)
        return self.profile()

    # ------------------------------------------------------------------ data
    def advance(self, steps: int = 1) -> dict:
        """Move the local data stream ``steps`` steps forward (drift)."""
        for _ in range(steps):
            self.stream.step()
        env = self.stream.environment
        return {"step": self.stream.step_index, "corruption": env.corruption, "severity": env.severity,
                "classes": list(env.classes) if env.classes else self.classes}

    def stream_state(self) -> dict:
        return self.stream.state_dict()

    # ------------------------------------------------------------------ summary & drift
    def load_selector(self, payload: bytes) -> None:
        state, _, _ = unpack_state(payload)
        self.selector.load_state_dict(state)

    @torch.no_grad()
    def importance(self) -> list[list[float]]:
        """Mean selector probabilities over the local training data (the L x N summary)."""
        self.selector.eval()
        x = self.stream.train_set().images
        probs = self.selector.probabilities(x)
        return [p.mean(0).tolist() for p in probs]

    def summary(self, selector_payload: bytes | None = None) -> dict:
        """What the cloud needs to derive this device's sub-model; never raw data."""
        if selector_payload is not None:
            self.load_selector(selector_payload)
        return {"device": self.name, "importance": self.importance(), "resources": self.profile(),
                "num_samples": self.stream.local_size, "classes": self.classes,
                "held_spec": self.spec.to_json() if self.spec is not None else None,
                "held_version": self.version}

    def drift_score(self) -> dict:
        """Drift of the incoming data relative to the state after the last adaptation."""
        train = self.stream.train_set()
        acc = evaluate(self.model, train.images, train.labels)[0] if self.model is not None else None
        score = self.detector.score(acc, self.importance())
        return {"labelled": score.labelled, "label_free": score.label_free, "combined": score.combined,
                "accuracy_on_new": acc}

    # ------------------------------------------------------------------ sub-model
    def install(self, spec_json: str, payload: bytes | None, costs: dict, version: int | None = None) -> dict:
        """Install a sub-model sent by the cloud (``payload=None``: keep the held one).

        A payload of kind ``delta`` carries the cloud's change since the version held here and is
        added to the locally adapted weights (see :mod:`eclm.modules.deltas`).

        Raises:
            MalformedPayloadError: If the payload does not decode or does not match the spec.
            ValueError: If no payload is sent but the device does not hold that spec.
        """
        spec = SubModelSpec.from_json(spec_json)
        if payload is None:
            if self.model is None or self.spec != spec:
                raise ValueError(f"device {self.name}: no weights sent and the held sub-model is not {spec_json}")
            self.version = version
            return {"params": sum(p.numel() for p in self.model.parameters()), "modules": spec.num_modules(),
                    "kept": True}
        state, payload_spec, meta = unpack_state(payload)
        if payload_spec != spec:
            raise MalformedPayloadError("payload spec differs from the announced spec")
        if meta.get("kind") == "delta":  # the cloud's change since the version held here
            if self.model is None or self.spec != spec or self.version != meta.get("base_version"):
                raise ValueError(f"device {self.name}: got a delta against version {meta.get('base_version')} "
                                 f"but holds version {self.version} of {self.spec.to_json() if self.spec else None}")
            self.model.load_state_dict(apply_delta(self.model.state_dict(), state))
        else:
            self.model = rebuild_submodel(self.skeleton, spec, state)
        self.spec = spec
        self.version = version
        self.costs = CostTable.from_dict(costs)
        if self.cfg.adaptation.recalibrate_norms:
            recalibrate_norms(self.model, self.stream.train_set().images)
        return {"params": sum(p.numel() for p in self.model.parameters()), "modules": spec.num_modules()}

    def shrink(self, **resource_changes: float) -> dict:
        """Local swap after a resource drop: keep the best subset of held modules that fits."""
        if self.model is None or self.spec is None or self.costs is None:
            raise RuntimeError(f"device {self.name} holds no sub-model to shrink")
        self.set_resources(**resource_changes)
        a = self.cfg.adaptation
        full = self.costs.total(SubModelSpec(model_id=self.spec.model_id,
                                             groups=[tuple(range(len(m))) for m in self.costs.modules]))
        budget: DeviceProfile = budget_from_resources(
            self.name, self.resources, full_params=full["params"], batch_size=a.batch_size,
            target_step_seconds=a.target_step_seconds, max_transfer_seconds=a.max_transfer_seconds,
        )
        allows_empty = [l.allows_empty for l in self.skeleton.layers]
        new = shrink_submodel(self.costs, self.spec, self.importance(), budget, allows_empty)
        before = self.costs.total(self.spec)
        if new != self.spec:
            self.model = narrow(self.model, self.skeleton.layers, self.spec.groups, new.groups)
            self.spec = new
            if a.recalibrate_norms:
                recalibrate_norms(self.model, self.stream.train_set().images)
        return {"spec": new.to_json(), "params_before": before["params"], "params_after": self.costs.total(new)["params"]}

    # ------------------------------------------------------------------ adaptation
    def adapt(self) -> dict:
        """Fine-tune on local data; return metrics and the update (safetensors bytes).

        With ``adaptation.exchange: delta`` the update is this cycle's change of the weights
        (``after - before``); with ``weights`` it is the adapted sub-model itself.
        """
        if self.model is None or self.spec is None:
            raise RuntimeError(f"device {self.name} has no sub-model installed")
        a = self.cfg.adaptation
        train, test, prev = self.stream.train_set(), self.stream.test_set(), self.stream.previous_test_set()
        acc_before, loss_before = evaluate(self.model, test.images, test.labels)
        prev_before = evaluate(self.model, prev.images, prev.labels)[0] if prev is not None else None
        rss_before = psutil.Process().memory_info().rss
        start_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.rounds)
        stats = finetune(self.model, train.images, train.labels, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                         momentum=a.momentum, replay=self.replay if a.replay_capacity else None,
                         replay_ratio=a.replay_ratio, generator=gen,
                         local_classes=self.classes if a.restrict_to_local_classes else None)
        if a.recalibrate_norms:  # training-mode batches mixed replayed environments into the stats
            recalibrate_norms(self.model, train.images)
        acc_after, loss_after = evaluate(self.model, test.images, test.labels)
        prev_after = evaluate(self.model, prev.images, prev.labels)[0] if prev is not None else None
        importance = self.importance()
        self.detector.update_reference(evaluate(self.model, train.images, train.labels)[0], importance)
        cost = self.costs.total(self.spec) if self.costs else {}
        self.rounds += 1
        meta = {"device": self.name, "round": self.rounds, "base_version": self.version}
        if a.exchange == "delta":  # this cycle's change only; the cloud re-bases it on its current slices
            delta = state_delta(self.model.state_dict(), start_state, dtype=WIRE_DTYPES[a.delta_dtype])
            payload = pack_state(delta, self.spec, meta | {"kind": "delta"})
        else:
            payload = pack_state(self.model.state_dict(), self.spec, meta)
        return {
            "device": self.name,
            "payload": payload,
            "importance": importance,
            "num_samples": len(train.images),
            "classes": self.classes,
            "metrics": {
                "acc_before": acc_before, "acc_after": acc_after, "loss_before": loss_before, "loss_after": loss_after,
                "prev_acc_before": prev_before, "prev_acc_after": prev_after,
                "forgetting": (prev_before - prev_after) if prev is not None else None,
                "train_seconds": stats.seconds, "seconds_per_batch": stats.seconds_per_batch,
                "batches": stats.batches, "params": cost.get("params"), "flops": cost.get("flops"),
                "train_memory_estimate": training_memory_bytes(cost.get("params", 0), cost.get("activation_bytes", 0), a.batch_size),
                "rss_delta": psutil.Process().memory_info().rss - rss_before,
                "environment": self.stream.environment.corruption, "severity": self.stream.environment.severity,
            },
        }

    def snapshot_model(self) -> bytes | None:
        """Current sub-model weights (safetensors), for tests and inspection."""
        return None if self.model is None else pack_state(copy.deepcopy(self.model).state_dict(), self.spec)

    def ping(self) -> str:
        return self.name

    def timestamp(self) -> float:
        return time.time()

    # --- split learning: the device side of a round (logic in eclm.pipelines.split_edge) ---
    def split_hello(self) -> dict:
        """What the cloud needs to plan a split round: local sizes, classes, resources, host speed."""
        from eclm.pipelines.profiler import measure_gflops

        return {"device": self.name, "num_samples": len(self.stream.train_set().images),
                "test_samples": len(self.stream.test_set().images), "classes": self.classes,
                "resources": self.profile(), "host_gflops": measure_gflops()}

    def split_begin(self, payload: bytes, client_sizes: list[int], client_index: int) -> dict:
        """Install the device part (prefix of the split sub-model) the cloud sent."""
        from eclm.pipelines.split_edge import SplitDeviceWorker

        train, test = self.stream.train_set(), self.stream.test_set()
        self._split = SplitDeviceWorker.from_payload(
            self.name, self.skeleton, payload, self.cfg.split, client_sizes, client_index,
            (train.images, train.labels), (test.images, test.labels))
        return self._split.describe()

    def _split_worker(self):
        if getattr(self, "_split", None) is None:
            raise RuntimeError(f"device {self.name} has no split session (split_begin was not called)")
        return self._split

    def split_forward(self, epoch: int, step: int, gradient: bytes | None = None) -> bytes:
        """Apply the previous step's gradient (if any), then send this step's smashed activations."""
        return self._split_worker().forward(epoch, step, gradient)

    def split_backward(self, gradient: bytes) -> None:
        self._split_worker().backward(gradient)

    def split_epoch_end(self) -> dict:
        return self._split_worker().epoch_end()

    def split_load(self, payload: bytes) -> None:
        self._split_worker().load(payload)

    def split_smash_test(self) -> bytes:
        return self._split_worker().smash_test()

    def split_end(self) -> dict:
        """Close the split session; the drift reference moves to the adapted state."""
        info = self._split_worker().describe()
        self._split = None
        self.detector.update_reference(None, self.importance())
        self.rounds += 1
        return info
