"""The user-facing Python API: ``eclm.Platform``.

The platform is the driver/coordinator: it starts (or connects to) Ray, creates one
``CloudActor`` and one ``EdgeActor`` per device, and runs adaptation cycles
(derive or refresh sub-models -> adapt on devices -> validated merge -> log). Trigger policies
decide when a cycle runs and for which devices. It talks to Ray only through
``eclm.runtime``/``eclm.actors`` and to MLflow only through ``eclm.tracking``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eclm.config import PlatformConfig
from eclm.pipelines.triggers import Decision, Observation, PeriodicTrigger, Trigger, trigger_from_config
from eclm.tracking import CampaignTracker
from eclm.tracking.plots import accuracy_over_rounds, module_usage_heatmap

log = logging.getLogger("eclm.platform")


@dataclass
class CycleResult:
    """Everything one adaptation cycle produced (also what goes to MLflow)."""

    round: int
    devices: list[str]
    device_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    merge: dict[str, Any] = field(default_factory=dict)
    cloud_val_acc: float | None = None
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    specs: dict[str, str] = field(default_factory=dict)

    def mean(self, key: str) -> float | None:
        vals = [m[key] for m in self.device_metrics.values() if m.get(key) is not None]
        return sum(vals) / len(vals) if vals else None


class Platform:
    """Run and steer an edge-cloud continual-learning campaign.

    Use as a context manager::

        with Platform.from_yaml("campaign.yaml") as p:
            p.pretrain()
            p.run(cycles=5)

    Args:
        config: A :class:`PlatformConfig` or a dict validated into one.
    """

    def __init__(self, config: PlatformConfig | dict) -> None:
        self.cfg = config if isinstance(config, PlatformConfig) else PlatformConfig.from_dict(config)
        self.names = [d.name for d in self.cfg.devices]
        self.cloud = None
        self.edges: dict[str, Any] = {}
        self.stream_states: dict[str, dict] = {}
        self.info: dict[str, Any] = {}
        self.history: list[CycleResult] = []
        self.trigger: Trigger = trigger_from_config(self.cfg.trigger) if self.cfg.trigger else PeriodicTrigger(every_steps=1)
        self.step_index = 0
        self.round = 0
        self.started_at = 0.0
        self._owns_ray = False
        self._pending_restart: set[str] = set()
        self._last_resources: dict[str, dict] = {}
        self._manual: list[str] = []
        self._deployments: list = []
        self.tracker = CampaignTracker.from_config(self.cfg.tracking, workdir=self.cfg.workdir)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Platform:
        return cls(PlatformConfig.from_yaml(path))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Platform:
        """Start (or connect to) Ray, create the actors and open the MLflow run."""
        from eclm import runtime
        from eclm.actors import create_cloud_actor

        self.started_at = time.time()
        self._owns_ray = runtime.start_ray(self.cfg.ray.address, num_cpus=self.cfg.ray.num_cpus,
                                           num_devices=len(self.names))
        self.cloud = create_cloud_actor(self.cfg)
        self._create_edges(range(len(self.names)))
        self.info = self._get({"cloud": self.cloud.info.remote()})["cloud"]
        self._measure_links()
        Path(self.cfg.workdir).mkdir(parents=True, exist_ok=True)
        self.tracker.start(self.cfg.model_dump(mode="json"), run_name=self.cfg.name,
                           tags={"model_id": self.info["model_id"], "backbone": self.cfg.backbone.name})
        self.tracker.log_json("model/info.json", {k: v for k, v in self.info.items() if k != "costs"})
        return self

    def _measure_links(self, nbytes: int = 4 << 20) -> None:
        """For devices with ``measure: true`` and no configured bandwidth, time shipping
        ``nbytes`` from the driver/cloud side to the device and record the link bandwidth."""
        from eclm import runtime
        from eclm.pipelines.profiler import bandwidth_mbps

        payload = bytes(nbytes)
        for device in self.cfg.devices:
            if not device.measure or device.bandwidth_mbps is not None:
                continue
            edge = self.edges[device.name]
            empty = runtime.time_call(lambda e=edge: e.echo_size.remote(b""))
            full = runtime.time_call(lambda e=edge: e.echo_size.remote(payload))
            mbps = bandwidth_mbps(nbytes, full, empty)
            if mbps is not None:
                self._get({"e": edge.set_resources.remote(bandwidth_mbps=mbps)})

    def shutdown(self, status: str = "FINISHED") -> None:
        """End the MLflow run and stop the actors (and Ray, if this platform started it)."""
        from eclm import runtime

        for deployment in self._deployments:
            try:
                deployment.close()  # idempotent; logs its session while the run is still open
            except Exception as err:  # shutting down must not fail because a deployment did
                log.warning("closing deployment failed: %s", err)
        self._deployments = []
        self.tracker.end(status)
        for actor in [self.cloud, *self.edges.values()]:
            if actor is not None:
                runtime.kill(getattr(actor, "pool", actor))
        self.cloud, self.edges = None, {}
        if self._owns_ray:
            runtime.shutdown_ray()
            self._owns_ray = False

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown("FAILED" if exc_type else "FINISHED")

    # ------------------------------------------------------------------ helpers
    def _get(self, refs: dict[str, Any]) -> dict[str, Any]:
        """Results of refs that must all succeed (cloud calls)."""
        from eclm import runtime

        results, failures = runtime.gather(refs, self.cfg.ray.call_timeout_s)
        if failures:
            raise RuntimeError("; ".join(f"{k}: {f.kind}: {f.message}" for k, f in failures.items()))
        return results

    def _gather_edges(self, refs: dict[str, Any], failures: dict[str, str]) -> dict[str, Any]:
        from eclm import runtime

        results, failed = runtime.gather(refs, self.cfg.ray.call_timeout_s)
        for name, f in failed.items():
            failures[name] = f"{f.kind}: {f.message}"
            if f.kind in ("dead", "timeout"):
                self._pending_restart.add(name)
        return results

    def _create_edges(self, indices) -> None:
        """Create the edge actors (or pools) of the devices ``indices``, resuming stream state."""
        from eclm.actors import PooledDevice, create_edge_actor, create_edge_pool

        indices = sorted(indices)
        pool_size = self.cfg.ray.edge_pool_size
        if pool_size is None:
            for i in indices:
                name = self.names[i]
                self.edges[name] = create_edge_actor(self.cfg, i, self.stream_states.get(name))
            return
        # Pool p hosts devices i with i % pool_size == p; a restart recreates whole pools.
        for p in sorted({i % pool_size for i in indices}):
            members = [i for i in range(len(self.names)) if i % pool_size == p]
            states = {self.names[i]: self.stream_states[self.names[i]] for i in members if self.names[i] in self.stream_states}
            pool = create_edge_pool(self.cfg, members, states)
            for i in members:
                self.edges[self.names[i]] = PooledDevice(pool, self.names[i])

    def _restart_failed(self) -> list[str]:
        """Recreate actors that died, resuming their data stream from the last snapshot."""
        from eclm import runtime

        if not self._pending_restart:
            return []
        restarted = sorted(self._pending_restart)
        for name in restarted:
            handle = self.edges.get(name)
            runtime.kill(getattr(handle, "pool", handle))
        self._create_edges([self.names.index(n) for n in restarted])
        self._pending_restart.clear()
        self.tracker.log_json(f"rounds/restarts_step_{self.step_index:04d}.json", {"restarted": restarted})
        return restarted

    # ------------------------------------------------------------------ stages
    def pretrain(self) -> list[dict]:
        """Run the offline stage on the cloud; logs per-epoch metrics and registers version 0."""
        start = time.perf_counter()
        history = self._get({"c": self.cloud.pretrain.remote()})["c"]
        for i, h in enumerate(history):
            self.tracker.log_round(i, {f"offline/{k}": v for k, v in h.items() if isinstance(v, (int, float))})
        acc = self._get({"c": self.cloud.validation_accuracy.remote()})["c"]
        self.tracker.log_round(0, {"cloud/val_acc": acc, "time/pretrain": time.perf_counter() - start})
        self._register_version(0, {"cloud/val_acc": acc})
        return history

    def step(self) -> Observation:
        """Advance every device's data by ``steps_per_cycle`` and observe drift and resources."""
        self.step_index += 1
        failures: dict[str, str] = {}
        self._restart_failed()
        adv = self._gather_edges({n: a.advance.remote(self.cfg.steps_per_cycle) for n, a in self.edges.items()}, failures)
        states = self._gather_edges({n: self.edges[n].stream_state.remote() for n in adv}, failures)
        self.stream_states.update(states)
        drift = self._gather_edges({n: self.edges[n].drift_score.remote() for n in adv}, failures)
        resources = self._gather_edges({n: self.edges[n].profile.remote() for n in adv}, failures)
        self._swap_on_resource_drop(resources)
        self._last_drift = {n: d["combined"] for n, d in drift.items()}
        manual, self._manual = tuple(self._manual), []
        return Observation(
            step=self.step_index, time=time.time() - self.started_at, drift_scores=self._last_drift,
            resources={n: {k: float(v) for k, v in r.items() if v is not None} for n, r in resources.items()},
            devices=tuple(self.names), manual_requests=manual,
        )

    def set_device_resources(self, device: str, **resources: float) -> dict:
        """Change a device's resources (emulation); the next :meth:`step` sees the drop and the
        device swaps to a smaller sub-model locally."""
        if device not in self.edges:
            raise ValueError(f"unknown device {device!r}; known: {self.names}")
        return self._get({"e": self.edges[device].set_resources.remote(**resources)})["e"]

    def _swap_on_resource_drop(self, resources: dict[str, dict]) -> None:
        """Local swap for every device whose memory, compute or bandwidth fell since last step."""
        for name, now in resources.items():
            before = self._last_resources.get(name, {})
            dropped = [k for k, v in now.items() if v is not None and before.get(k) is not None and v < before[k]]
            self._last_resources[name] = now
            if not dropped:
                continue
            failures: dict[str, str] = {}
            holds = self._gather_edges({name: self.edges[name].holds_model.remote()}, failures).get(name)
            if not holds:
                continue
            out = self._gather_edges({name: self.edges[name].shrink.remote()}, failures)
            record = {"device": name, "dropped": dropped, "resources": now, "step": self.step_index,
                      **(out.get(name) or {"error": failures.get(name)})}
            self.tracker.log_json(f"swaps/step_{self.step_index:04d}_{name}.json", record)
            if name in out:
                self.tracker.log_round(self.round, {f"device/{name}/params_after_swap": out[name]["params_after"]})

    def schedule(self, trigger: Trigger) -> None:
        """Use ``trigger`` (a policy object) to decide when cycles run and for which devices."""
        self.trigger = trigger

    def request_cycle(self, devices: list[str] | None = None) -> None:
        """Ask for a manual cycle at the next step (picked up by a ``ManualTrigger``)."""
        self._manual.extend(devices or self.names)

    def run(self, cycles: int | None = None) -> list[CycleResult]:
        """Step ``cycles`` times (default ``config.cycles``), running a cycle whenever the
        trigger decides so. Returns the cycles that ran."""
        ran = []
        for _ in range(self.cfg.cycles if cycles is None else cycles):
            obs = self.step()
            decision: Decision = self.trigger.decide(obs)
            if decision.kind == "adapt":
                ran.append(self.run_cycle(list(decision.devices) or None, reason=decision.reason))
            else:
                self.tracker.log_round(self.round, {f"drift/{n}": s for n, s in obs.drift_scores.items()})
        return ran

    def run_cycle(self, devices: list[str] | None = None, reason: str = "manual") -> CycleResult:
        """One adaptation cycle: derive/refresh sub-models, adapt, validated merge, log."""
        unknown = sorted(set(devices or []) - set(self.names))
        if unknown:
            raise ValueError(f"unknown devices {unknown}; known: {self.names}")
        self._restart_failed()
        self.round += 1
        devs = [n for n in (devices or self.names)]
        res = CycleResult(round=self.round, devices=devs)
        t0 = time.perf_counter()
        selector = self._get({"c": self.cloud.selector_payload.remote()})["c"]
        from eclm import runtime

        sel_ref = runtime.put(selector)
        summaries = self._gather_edges({n: self.edges[n].summary.remote(sel_ref) for n in devs}, res.failures)
        from eclm.runtime.split_round import choose_split_devices, run_split_round

        split_devs = choose_split_devices(self.cloud, self.cfg, summaries, self.cfg.ray.call_timeout_s)
        packages: dict[str, dict] = {}
        for n, s in summaries.items():
            if n in split_devs:  # split learning: the split round hands out device parts instead
                continue
            try:
                packages[n] = self._get({"c": self.cloud.derive.remote(
                    n, s["importance"], s["resources"], s.get("held_spec"), s.get("held_version"))})["c"]
            except RuntimeError as err:
                res.failures[n] = f"derive: {err}"
        res.durations["derive"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        installs = self._gather_edges(
            {n: self.edges[n].install.remote(p["spec"], p["payload"], self.info["costs"], p["version"])
             for n, p in packages.items()},
            res.failures,
        )
        res.durations["ship"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        adapt_refs = {n: self.edges[n].adapt.remote() for n in installs}
        split = run_split_round(self.cloud, self.edges, {n: summaries[n] for n in split_devs}, self.cfg,
                                split_devs) if split_devs else None  # runs while local devices adapt
        adapted = self._gather_edges(adapt_refs, res.failures)
        if split is not None:  # split uploads (device parts + server part) merge like any update
            packages.update(split.packages)
            adapted.update(split.uploads)
            res.failures.update(split.failures)
            self._pending_restart |= split.lost
        res.durations["adapt"] = time.perf_counter() - t2
        for n in devs:
            down = len(selector) + (len(packages[n]["payload"] or b"") if n in packages else 0)
            res.bytes_down[n] = down
            res.bytes_up[n] = len(adapted[n]["payload"]) if n in adapted else 0
        if split is not None:  # split devices sent activations and device parts, not a sub-model
            res.bytes_up.update(split.bytes_up)
            res.bytes_down.update({n: res.bytes_down[n] + b for n, b in split.bytes_down.items()})
        for n, out in adapted.items():
            res.device_metrics[n] = dict(out["metrics"], drift=getattr(self, "_last_drift", {}).get(n))
            res.specs[n] = packages[n]["spec"]
        t3 = time.perf_counter()
        if adapted:
            res.merge = self._get({"c": self.cloud.merge.remote(list(adapted.values()))})["c"]
        else:
            res.merge = {"decision": "reject", "reason": "no device returned an update", "accepted": [], "rejected": {}}
        res.cloud_val_acc = self._get({"c": self.cloud.validation_accuracy.remote()})["c"]
        res.durations["merge"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        self._log_cycle(res, summaries, reason)
        if split is not None:
            self.tracker.log_round(self.round, split.metrics)
            self.tracker.log_json(f"rounds/round_{self.round:03d}/split_report.json", split.report)
        res.durations["log"] = time.perf_counter() - t4
        self.tracker.log_round(self.round, {f"time/{k}": v for k, v in res.durations.items()})
        self.history.append(res)
        return res

    def shrink_device(self, device: str, **resources: float) -> dict:
        """Tell a device its resources dropped; it swaps to a smaller sub-model locally."""
        out = self._get({"e": self.edges[device].shrink.remote(**resources)})["e"]
        self.tracker.log_json(f"rounds/round_{self.round:03d}/shrink_{device}.json", out)
        return out

    def cloud_digest(self) -> str:
        """SHA-256 of the cloud weights (for checking bit-identity)."""
        return self._get({"c": self.cloud.cloud_state_digest.remote()})["c"]

    # ------------------------------------------------------------------ logging
    def _register_version(self, version: int, metrics: dict) -> None:
        payload = self._get({"c": self.cloud.model_payload.remote()})["c"]
        spec = json.dumps({"model_id": self.info["model_id"], "arch": self.info["arch"], "version": version})
        self.tracker.log_model_version(payload, spec, metrics, f"v{version:04d}")

    def _log_cycle(self, res: CycleResult, summaries: dict, reason: str) -> None:
        decision_code = {"accept": 2, "partial": 1, "reject": 0}.get(res.merge.get("decision"), 0)
        m: dict[str, float] = {
            "cloud/val_acc": res.cloud_val_acc,
            "cloud/version": res.merge.get("version", 0),
            "merge/decision": decision_code,
            "merge/accepted_devices": len(res.merge.get("accepted", [])),
            "merge/rejected_devices": len(res.merge.get("rejected", {})),
            "traffic/bytes_up": sum(res.bytes_up.values()),
            "traffic/bytes_down": sum(res.bytes_down.values()),
            "devices/failed": len(res.failures),
        }
        for key in ("acc_before", "acc_after", "forgetting"):
            if res.mean(key) is not None:
                m[f"devices/mean_{key}"] = res.mean(key)
        for n, dm in res.device_metrics.items():
            for key in ("acc_before", "acc_after", "forgetting", "drift", "params", "flops", "seconds_per_batch",
                        "train_memory_estimate", "loss_after"):
                if dm.get(key) is not None:
                    m[f"device/{n}/{key}"] = dm[key]
        for n in res.devices:
            m[f"device/{n}/bytes_up"] = res.bytes_up.get(n, 0)
            m[f"device/{n}/bytes_down"] = res.bytes_down.get(n, 0)
        self.tracker.log_round(self.round, m)
        report = dict(res.merge, round=self.round, trigger_reason=reason, failures=res.failures, specs=res.specs)
        self.tracker.log_json(f"rounds/round_{self.round:03d}/merge_report.json", report)
        hist = {n: [(h.round, h.device_metrics[n]["acc_before"], h.device_metrics[n]["acc_after"])
                    for h in self.history + [res] if n in h.device_metrics] for n in self.names}
        cloud = [(h.round, h.cloud_val_acc) for h in self.history + [res]]
        fig = accuracy_over_rounds(hist, cloud_accuracy=cloud)
        self.tracker.log_figure(fig, f"rounds/round_{self.round:03d}/accuracy.png")
        usage = _mean_usage([s["importance"] for s in summaries.values()])
        if usage:
            fig = module_usage_heatmap(usage, self.info["layer_names"])
            self.tracker.log_figure(fig, f"rounds/round_{self.round:03d}/module_usage.png")
        if res.merge.get("decision") in ("accept", "partial"):
            self._register_version(res.merge["version"], {"cloud/val_acc": res.cloud_val_acc})

    # ------------------------------------------------------------------ serving (partitioned inference)
    def serve(self, model: str = "cloud", *, nodes: list | None = None, objective: str | None = None,
              scheduler: str | None = None, config: Any = None, name: str | None = None, **overrides: Any):
        """Deploy the cloud model or a device's current sub-model across (emulated) edge nodes.

        The model is cut into contiguous stages from per-block latencies each stage actor measures
        on its node, requests stream through the stages, and the deployment re-partitions when a
        node changes (see ``docs/serving.md``). Weights travel as safetensors bytes plus the JSON
        architecture; the session is logged to this platform's MLflow run under ``serving/<name>/``.

        Args:
            model: ``"cloud"`` or the name of a device that holds a sub-model.
            nodes: Nodes in pipeline order: CPU shares, or mappings with ``cpu_share`` and
                optionally ``memory_bytes`` / ``label`` (default: the serving config's nodes).
            objective: ``"throughput"`` or ``"latency"`` (default: the config's).
            scheduler: ``"amp4ec"``, ``"round_robin"`` or ``"least_loaded"`` (default: the config's).
            config: A :class:`~eclm.serving.ServingConfig` or dict (default: ``self.cfg.serving`` if the
                platform config has one, else the defaults: AMP4EC's 1.0/0.6/0.4 nodes).
            name: Session name for logs (default ``<model>-<k>``).
            **overrides: Further ``ServingConfig`` fields, e.g. ``micro_batch_size=4``.

        Returns:
            The running :class:`~eclm.runtime.serving.Deployment` (close it, or use it as a context manager).

        Raises:
            RuntimeError: If the platform is not started.
            ValueError: If ``model`` is unknown, the device holds no sub-model, or a setting is invalid.
        """
        from eclm.runtime.serving import Deployment
        from eclm.serving import ModelSource, ServingConfig

        if self.cloud is None:
            raise RuntimeError("start the platform (Platform.start or a with-block) before serve()")
        base = config if config is not None else getattr(self.cfg, "serving", None)
        cfg = base if isinstance(base, ServingConfig) else ServingConfig.model_validate(base or {})
        update = {k: v for k, v in {"objective": objective, "scheduler": scheduler}.items() if v is not None}
        if update or overrides:
            cfg = ServingConfig.model_validate({**cfg.model_dump(), **update, **overrides})
        if nodes is not None:
            cfg = cfg.with_nodes(nodes)
        if model == "cloud":
            payload = self._get({"c": self.cloud.model_payload.remote()})["c"]
        elif model in self.edges:
            payload = self._get({"e": self.edges[model].snapshot_model.remote()})["e"]
            if payload is None:
                raise ValueError(f"device {model!r} holds no sub-model yet; run a cycle for it first")
        else:
            raise ValueError(f"model must be 'cloud' or one of the devices {self.names}, got {model!r}")
        b = self.cfg.backbone
        source = ModelSource(self.info["arch"], b.modules_per_layer, self.cfg.input_size, payload,
                             b.selector_width, b.selector_dim, name=model, meta={"model_id": self.info["model_id"]})
        self._serve_sessions = getattr(self, "_serve_sessions", 0) + 1
        deployment = Deployment(source, cfg, tracker=self.tracker, name=name or f"{model}-{self._serve_sessions}")
        self._deployments.append(deployment)
        return deployment


def _mean_usage(summaries: list[list[list[float]]]) -> list[list[float]]:
    if not summaries:
        return []
    return [[sum(s[l][i] for s in summaries) / len(summaries) for i in range(len(summaries[0][l]))]
            for l in range(len(summaries[0]))]
