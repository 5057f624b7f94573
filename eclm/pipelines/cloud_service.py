"""The cloud's work, Ray-free: offline stage, per-device derivation, validated merge, versions.

:class:`CloudService` is a plain class; ``eclm.actors`` turns it into the ``CloudActor`` with
``ray.remote`` and the ``cloud`` resource. Every method takes and returns plain values, bytes
(safetensors) or JSON-able dicts, so nothing crossing the actor boundary needs pickled code.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import Tensor

from eclm.config import PlatformConfig
from eclm.data import build_source, build_split
from eclm.modules import (
    BudgetTooSmallError,
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
from eclm.modules.deltas import WIRE_DTYPES, apply_delta, state_delta
from eclm.modules.exchange import MalformedPayloadError
from eclm.pipelines.adaptation import evaluate, finetune, recalibrate_norms
from eclm.pipelines.aggregators import create_aggregator
from eclm.pipelines.defences import ClaimBounds, RobustScreen, reference_update
from eclm.pipelines.mcnemar import correct_mask
from eclm.pipelines.profiler import budget_from_resources
from eclm.pipelines.validated_merge import Evaluation, ValidatedMerge


class CloudService:
    """Holds the modular cloud model and its version history.

    Args:
        config_json: The platform config as JSON (validated again here).
        threads: torch threads for this process.
    """

    def __init__(self, config_json: str, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.cfg = PlatformConfig.model_validate_json(config_json)
        torch.manual_seed(self.cfg.seed)
        data = build_source(self.cfg.data).load()
        split = build_split(data, self.cfg.data)
        cloud = split.cloud
        # The classes each device holds as the cloud knows them (the split follows from the config);
        # an update claiming other classes is rejected (docs/security.md).
        self.known_classes = {d.name: set(p.classes) for d, p in zip(self.cfg.devices, split.devices, strict=True)}
        self.best_val_correct: Tensor | None = None  # per-sample correctness of the best accepted version
        self._split_uploads: set[str] = set()  # devices of the last split round: their uploads are one
        self.train_x, self.train_y = cloud.train.images, cloud.train.labels
        self.val_x, self.val_y = cloud.val.images, cloud.val.labels
        self.num_classes = data.num_classes
        b = self.cfg.backbone
        self.model: ModularModel = modularize(
            b.name,
            modules_per_layer=b.modules_per_layer,
            input_size=self.cfg.input_size,
            weights_path=b.weights_path,
            selector_width=b.selector_width,
            selector_dim=b.selector_dim,
            num_classes=self.num_classes,
            **b.kwargs,
        ).eval()
        self.version = 0
        self.given_specs: dict[str, SubModelSpec] = {}
        self.checkpoint_dir = Path(self.cfg.workdir) / "checkpoints" / self.cfg.name
        self.usage: dict[str, list[list[float]]] = {}
        self.best_val_acc: float | None = None
        self._versions: dict[int, dict[str, Tensor]] = {}  # recent versions, to ship deltas against
        self._remember_version()

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        """Architecture facts devices and the driver need (all JSON-able)."""
        costs = self.model.costs()
        return {
            "model_id": self.model.model_id,
            "arch": self.model.arch,
            "layer_names": [l.name for l in self.model.layers],
            "layer_sizes": self.model.layer_sizes,
            "allows_empty": [l.allows_empty for l in self.model.layers],
            "costs": costs.to_dict(),
            "full_cost": costs.total(self.model.full_spec()),
            "num_classes": self.num_classes,
            "version": self.version,
            "proxy_train": len(self.train_x),
            "proxy_val": len(self.val_x),
        }

    def pretrain(self, progress: bool = False) -> list[dict]:
        """Run the offline stage on the proxy data; saves version 0."""
        history = train_offline(
            self.model, self.train_x, self.train_y, self.val_x, self.val_y, self.cfg.offline,
            num_classes=self.num_classes, progress=progress,
        )
        self._save_checkpoint()
        self._versions = {}
        self._remember_version()
        self.best_val_acc = self.validation_accuracy()
        self.best_val_correct = None
        self._remember_best_predictions()
        return [vars(h) for h in history]

    def validation_accuracy(self) -> float:
        return evaluate(self.model.extract(self.model.full_spec()), self.val_x, self.val_y)[0]

    def selector_payload(self) -> bytes:
        """The selector's weights (safetensors), which devices use for importance summaries."""
        return pack_state(self.model.selector.state_dict(), meta={"version": self.version})

    def model_payload(self) -> bytes:
        """The full cloud backbone (safetensors) with its full spec."""
        return pack_state(self.model.backbone.state_dict(), self.model.full_spec(), {"version": self.version})

    # ------------------------------------------------------------------ derivation
    def derive(self, device: str, importance: list[list[float]], resources: dict,
               held_spec: str | None = None, held_version: int | None = None) -> dict:
        """Derive and package the sub-model for one device.

        If the device already holds exactly the derived spec from the current cloud version
        (``held_spec``/``held_version``), nothing is shipped: it keeps its locally adapted
        weights. If it holds the spec from an older version and ``adaptation.exchange`` is
        ``delta``, it gets the cloud's change since that version (it adds it to its adapted
        weights); otherwise the full sub-model.

        Returns:
            ``{"spec": json, "payload": bytes or None, "version": int, "budget": dict, "cost": dict}``.

        Raises:
            BudgetTooSmallError: If the device cannot hold even the minimal sub-model.
        """
        a = self.cfg.adaptation
        full = self.model.costs().total(self.model.full_spec())
        budget = budget_from_resources(
            device, resources, full_params=full["params"], batch_size=a.batch_size,
            target_step_seconds=a.target_step_seconds, max_transfer_seconds=a.max_transfer_seconds,
        )
        start = time.perf_counter()
        spec = derive_submodel(self.model, importance, budget)
        solve = time.perf_counter() - start
        self.given_specs[device] = spec
        self.usage[device] = [list(v) for v in importance]
        same_spec = held_spec is not None and SubModelSpec.from_json(held_spec) == spec
        payload = None
        if not (same_spec and held_version == self.version):
            payload = self._package(device, spec, held_version if same_spec else None)
        return {
            "spec": spec.to_json(),
            "payload": payload,
            "version": self.version,
            "budget": budget.limits(),
            "cost": self.model.costs().total(spec),
            "solve_seconds": solve,
        }

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
    def _evaluator(self):
        # Devices report the classes they hold; the cloud evaluates each device's re-derived
        # sub-model on the proxy-validation samples of those classes (device data never leaves).
        classes: dict[str, list[int]] = {}

        def run(state: dict[str, Tensor], updates: list[ModuleUpdate]) -> Evaluation:
            probe = copy.deepcopy(self.model)
            probe.backbone.load_state_dict(state)
            correct = correct_mask(probe.extract(probe.full_spec()), self.val_x, self.val_y)
            per_device, per_correct = {}, {}
            for u in updates:
                cls = classes.get(u.device_id) or []
                mask = torch.isin(self.val_y, torch.tensor(cls, dtype=self.val_y.dtype))
                if mask.sum() > 0:
                    per_correct[u.device_id] = correct_mask(probe.extract(u.spec), self.val_x[mask], self.val_y[mask])
                    per_device[u.device_id] = float(per_correct[u.device_id].float().mean())
            overall = float(correct.float().mean()) if len(correct) else float("nan")
            return Evaluation(overall, per_device, correct, per_correct)

        return run, classes

    def merge(self, uploads: list[dict]) -> dict:
        """Validate and merge device uploads.

        Args:
            uploads: ``{"device", "payload" (safetensors bytes), "importance", "num_samples",
                "classes"}`` per device.

        Returns:
            The merge report as a dict, plus ``version`` and, when accepted, ``checkpoint``.
        """
        m = self.cfg.merge
        run, classes = self._evaluator()
        updates, rejected = [], {}
        split_members, self._split_uploads = self._split_uploads, set()
        for up in uploads:
            device = str(up.get("device"))
            try:
                state, spec, meta = unpack_state(up["payload"])
                if spec is None:
                    raise MalformedPayloadError("payload carries no sub-model spec")
                state = self._rebase(state, spec, meta)
                # claims travel as sent; the merge's claim bounds judge them (docs/security.md)
                updates.append(ModuleUpdate(device, spec, state, up["importance"], up["num_samples"],
                                            up.get("classes") or None, up.get("metrics")))
                classes[device] = [int(c) for c in up.get("classes") or []]
            except (MalformedPayloadError, KeyError, TypeError, ValueError) as err:
                rejected[device] = f"malformed upload: {err}"
        pipeline = ValidatedMerge(
            evaluate=run, aggregator=create_aggregator(m.aggregator, m.trim_fraction, m.krum_byzantine, m.krum_keep), weighting=m.weighting,
            max_relative_norm=m.max_relative_norm, tolerance=m.tolerance, device_tolerance=m.device_tolerance,
            min_updates=m.min_updates, server_lr=m.server_lr, step_backoff=m.step_backoff, merge_norm_statistics=m.merge_norm_statistics,
            finalize=self._finalize_candidate,
            reference_accuracy=self.best_val_acc,
            class_rows=tuple(classifier_keys(self.model.backbone)) if m.head_by_class else (),
            max_samples=self.cfg.data.samples_per_device[1],
            same_upload=split_members,
            **self._defences(),
        )
        cloud_state = self.model.backbone.state_dict()
        try:
            new_state, report = pipeline.run(cloud_state, self.model.layers, updates, self.given_specs, self._names)
        except Exception as err:  # a failed merge must leave the model untouched
            return {"decision": "reject", "reason": f"merge failed: {err!r}", "accepted": [],
                    "rejected": rejected, "version": self.version}
        report.rejected.update(rejected)
        out = report.to_dict()
        if new_state is not None:
            self.model.backbone.load_state_dict(new_state)
            self.version += 1
            self._remember_version()
            if report.cloud_acc_after is not None:
                self.best_val_acc = max(self.best_val_acc or 0.0, report.cloud_acc_after)
                self._remember_best_predictions()
            out["checkpoint"] = str(self._save_checkpoint())
        out["version"] = self.version
        return out

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

    def _save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"cloud_v{self.version:04d}.safetensors"
        state = {f"backbone.{k}": v.contiguous() for k, v in self.model.backbone.state_dict().items()}
        state |= {f"selector.{k}": v.contiguous() for k, v in self.model.selector.state_dict().items()}
        save_file(state, str(path), metadata={"model_id": self.model.model_id, "version": str(self.version)})
        return path

    def cloud_state_digest(self) -> str:
        """SHA-256 of the cloud backbone's tensors (lets tests prove bit-identity across actors)."""
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.model.backbone.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
        return h.hexdigest()

    def ping(self) -> bool:
        return True

    # --- split learning: the server side of a round (logic in eclm.pipelines.split_planning / split_cloud) ---
    def split_route(self, device: str, importance: list[list[float]], resources: dict) -> dict:
        """``auto`` mode: ``{"mode": "local" | "split", "reason"}`` for one device."""
        from eclm.pipelines.split_planning import local_training_fits

        a = self.cfg.adaptation
        fits, reason = local_training_fits(
            self.model, device, importance, resources, batch_size=a.batch_size,
            target_step_seconds=a.target_step_seconds, max_transfer_seconds=a.max_transfer_seconds)
        return {"device": device, "mode": "local" if fits else "split", "reason": reason}

    def split_prepare(self, devices: list[dict]) -> dict:
        """Plan a split round and open the server session; returns the plan and device parts."""
        from eclm.pipelines.profiler import measure_gflops
        from eclm.pipelines.split_planning import prepare_split_round

        classes = sorted({int(c) for d in devices for c in d.get("classes", [])})
        self._split, info = prepare_split_round(
            self.model, self.cfg.split, devices, server_gflops=measure_gflops(),
            allowed_classes=classes if self.cfg.adaptation.restrict_to_local_classes else None)
        self._split_devices = {d["name"]: d for d in devices}
        info["cost"] = self.model.costs().total(self._split.spec)
        for name, dev in info["devices"].items():
            dev["payload"] = self._split.device_payload(name, version=self.version)
            self.given_specs[name] = self._split.spec  # the merge checks split updates against it
            self.usage[name] = [list(v) for v in self._split_devices[name]["importance"]]
        return info

    def split_epoch_plan(self, epoch: int) -> list[list[int]]:
        return self._split.epoch_plan(epoch)

    def split_server_step(self, epoch: int, step: int, *messages: bytes) -> list:
        """One global step; returns one gradient per message, then the step record."""
        grads = self._split.server_step(epoch, step, messages)
        return [*grads, self._split.records[-1]]

    def split_aggregate(self, *ends: dict) -> list:
        """Epoch-end aggregation of device parts (ends in client order); returns one payload per
        device, then the epoch summary (training loss, step records, payload sizes)."""
        new = self._split.aggregate({e["device"]: e["state"] for e in ends})
        summary = self._split.epoch_summary()
        summary["payload_bytes"] = {name: len(p) for name, p in new.items()}
        return [*(new[name] for name in self._split.devices), summary]

    def split_evaluate(self, message: bytes) -> dict:
        return self._split.evaluate(message)

    def split_finish(self) -> dict[str, dict]:
        """Close the session; every device's upload carries the one aggregated sub-model."""
        session, self._split = self._split, None
        self._split_uploads = set(session.devices)  # one aggregated upload for all of them
        state = session.sub.state_dict()
        return {
            name: {"device": name, "importance": self._split_devices[name]["importance"],
                   "num_samples": int(self._split_devices[name]["num_samples"]),
                   "classes": list(self._split_devices[name].get("classes", [])),
                   "payload": pack_state(state, session.spec, {"version": self.version, "device": name,
                                                               "mode": "split"})}
            for name in session.devices
        }

    def split_abort(self) -> None:
        self._split = None


__all__ = ["BudgetTooSmallError", "CloudService"]
