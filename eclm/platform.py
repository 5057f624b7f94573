"""The user-facing Python API: ``eclm.Platform``, a thin facade over the cycle coordinator.

The platform starts (or connects to) Ray, creates the cloud actor and, once it answers, the edge
actors (:class:`~eclm.runtime.ray_fleet.RayFleet`), opens the MLflow run and the campaign store,
and hands every cycle to :class:`~eclm.campaign.coordinator.CycleCoordinator` (written against
endpoint protocols, it knows nothing about Ray). A campaign whose driver died continues with
:meth:`Platform.resume` (``eclm run --resume``) from its last commit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from eclm.campaign.coordinator import CycleCoordinator
from eclm.campaign.messages import CloudInfo, EpochRecord, Resources, SwapReport
from eclm.campaign.progress import BarProgress, NullProgress
from eclm.campaign.results import CycleResult
from eclm.campaign.store import CampaignState, CampaignStore
from eclm.config import PlatformConfig
from eclm.pipelines.triggers import Observation, Trigger
from eclm.tracking import CampaignTracker

log = logging.getLogger("eclm.platform")


class Platform:
    """Run and steer an edge-cloud continual-learning campaign.

    Use as a context manager::

        with Platform.from_yaml("campaign.yaml") as p:
            p.pretrain()
            p.run(steps=5)

    Args:
        config: A :class:`PlatformConfig` or a dict validated into one.
        resume: Continue the newest run of this campaign (same name and workdir) from its last
            commit instead of starting a new one; without a run to continue, a new one starts.
        progress: Draw progress (offline epochs, cycle phases) on stderr.
    """

    def __init__(self, config: PlatformConfig | dict, *, resume: bool = False, progress: bool = True) -> None:
        cfg = config if isinstance(config, PlatformConfig) else PlatformConfig.from_dict(config)
        # Resolved here, on the driver: actors on other nodes must not resolve paths against their cwd.
        self.cfg = cfg.resolve_paths()
        self.names = [d.name for d in self.cfg.devices]
        self.resume_requested = resume
        self.progress = BarProgress() if progress else NullProgress()
        self.resumed_from: int | None = None
        self.coordinator: CycleCoordinator | None = None
        self.store: CampaignStore | None = None
        self.fleet = None
        self._owns_ray = False
        self._trigger: Trigger | None = None
        self._deployments: list = []
        self.tracker = CampaignTracker.from_config(self.cfg.tracking, workdir=self.cfg.workdir)

    @classmethod
    def from_yaml(cls, path: str | Path, *, resume: bool = False) -> Platform:
        return cls(PlatformConfig.from_yaml(path), resume=resume)

    @classmethod
    def resume(cls, workdir: str | Path, name: str | None = None) -> Platform:
        """A platform continuing the newest run under ``workdir`` (of campaign ``name``, or of the
        only campaign there); its config is the one the run started with.

        Raises:
            FileNotFoundError: If there is no run to continue (or several campaigns and no name).
        """
        base = Path(workdir) / "campaigns"
        names = [name] if name else sorted(p.name for p in base.glob("*") if p.is_dir())
        if len(names) != 1:
            raise FileNotFoundError(f"cannot tell which campaign to resume under {base}: found {names or 'none'}")
        store = CampaignStore.latest(Path(workdir), names[0])
        if store is None:
            raise FileNotFoundError(f"no committed run of campaign {names[0]!r} under {base}")
        return cls(store.config(), resume=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Platform:
        """Start (or connect to) Ray, create the actors, open the store and the MLflow run.

        If anything fails on the way, what was started is stopped again before the error propagates.
        """
        try:
            return self._start()
        except BaseException:
            self.shutdown("FAILED")
            raise

    def _start(self) -> Platform:
        from eclm import runtime
        from eclm.campaign.tracking_recorder import TrackingRecorder
        from eclm.runtime.links import measure_links
        from eclm.runtime.ray_fleet import RayFleet

        cfg, where = self.cfg, self.cfg.ray.address or "a local Ray on 127.0.0.1"
        self.progress.message(f"starting {where}, the cloud actor and {len(self.names)} device(s) ...")
        self._owns_ray = runtime.start_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, num_devices=len(self.names))
        latest = CampaignStore.latest(cfg.workdir, cfg.name) if self.resume_requested else None
        state, snapshot = latest.load_latest() if latest is not None else (None, None)
        self.store = latest or CampaignStore.create(cfg)
        self.fleet = RayFleet(cfg, self.store.root / "devices", state and state.positions, snapshot, defer_devices=True)
        tags = {"backbone": cfg.backbone.name, "eclm.store": str(self.store.root)}
        if state is not None:
            tags |= {"eclm.resumed_from": state.mlflow_run_id or "", "eclm.resumed_round": str(state.round)}
        self.tracker.start(cfg.model_dump(mode="json"), run_name=cfg.name, tags=tags)
        if state is not None:
            if state.mlflow_run_id:
                self.tracker.close_stale_run(state.mlflow_run_id, "KILLED")
            self.resumed_from = state.round
            state = state.model_copy(update={"mlflow_run_id": self.tracker.run_id})
        state = state or CampaignState(run_id=self.store.run_id, mlflow_run_id=self.tracker.run_id)
        self.coordinator = CycleCoordinator(self.fleet, cfg, recorder=TrackingRecorder(self.tracker, cfg), store=self.store,
                                            trigger=self._trigger, state=state, progress=self.progress)
        info = self.coordinator.connect()
        self.fleet.start_devices()  # after the cloud is up: their start-up overlaps the offline stage
        self.tracker.log_json("model/info.json", {k: v for k, v in info.model_dump(mode="json").items() if k != "costs"})
        measure_links(self.fleet, cfg)
        if self.resumed_from is not None:
            log.info("resumed from round %d (%s)", self.resumed_from, self.store.root)
        return self

    def shutdown(self, status: str = "FINISHED") -> None:
        """End the MLflow run and stop the actors (and Ray, if this platform started it)."""
        from eclm import runtime

        for deployment in self._deployments:
            try:
                deployment.close()  # idempotent; logs its session while the run is still open
            except Exception as err:  # noqa: BLE001 - shutting down must not fail because a deployment did
                log.warning("closing deployment failed: %s", err)
        self._deployments = []
        if self.tracker.run_id is not None or self.tracker.journal_path is not None:
            self.tracker.end(status)
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None
        if self._owns_ray:
            runtime.shutdown_ray()
            self._owns_ray = False

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown("FAILED" if exc_type else "FINISHED")

    def _co(self) -> CycleCoordinator:
        if self.coordinator is None:
            raise RuntimeError("start the platform (Platform.start or a with-block) first")
        return self.coordinator

    # ------------------------------------------------------------------ the campaign
    @property
    def info(self) -> CloudInfo:
        return self._co().info

    @property
    def history(self) -> list[CycleResult]:
        """The cycles this process ran (earlier rounds of a resumed campaign: ``state.history``)."""
        return self._co().history

    @property
    def state(self) -> CampaignState:
        """The campaign's committed state (round, step, version, devices' held models, ...)."""
        return self._co().state

    def pretrain(self) -> list[EpochRecord]:
        """Run the offline stage on the cloud (version 0); refused (RuntimeError) on a resumed campaign."""
        if self.resumed_from is not None:
            raise RuntimeError(f"this campaign resumed from round {self.resumed_from}; it is trained already")
        return self._co().pretrain()

    def schedule(self, trigger: Trigger) -> None:
        """Use ``trigger`` (a policy object) to decide when cycles run and for which devices."""
        self._trigger = trigger
        if self.coordinator is not None:
            self.coordinator.trigger = trigger

    def step(self) -> CycleResult | None:
        """One data step for every device, then a cycle if the trigger decides so."""
        return self._co().step()

    def observe(self) -> Observation:
        """Advance every device's data one step; observe drift and resources (no cycle)."""
        return self._co().observe()

    def run(self, steps: int | None = None) -> list[CycleResult]:
        """Take ``steps`` data steps (default ``config.cycles``), running a cycle whenever the
        trigger decides so (the default trigger: every step). Returns the cycles that ran."""
        return self._co().run(self.cfg.cycles if steps is None else steps)

    def run_cycle(self, devices: list[str] | None = None, reason: str = "manual") -> CycleResult:
        """One adaptation cycle now: derive/refresh sub-models, adapt, validated merge, log."""
        return self._co().run_cycle(devices, reason)

    def request_cycle(self, devices: list[str] | None = None) -> None:  # picked up by a ManualTrigger
        self._co().request_cycle(devices)

    def set_device_resources(self, device: str, **resources: float) -> Resources:
        """Change a device's resources (emulation); at the next step a drop makes it swap locally."""
        return self._co().device_call(device, lambda d: d.set_resources(Resources(**resources)), "set_resources")

    def shrink_device(self, device: str, **resources: float) -> SwapReport | None:
        """Tell a device its resources dropped; it swaps to a smaller sub-model locally (no cloud trip).

        Raises:
            ValueError: If the device is unknown or the new resources cannot hold any subset of its modules.
        """
        return self._co().shrink(device, Resources(**resources) if resources else None)

    def cloud_digest(self) -> str:  # SHA-256 of the cloud weights (bit-identity checks)
        return self._co()._cloud(lambda c: c.state_digest(), "digest")

    # ------------------------------------------------------------------ serving
    def serve(self, model: str = "cloud", *, nodes: list | None = None, objective: str | None = None,
              scheduler: str | None = None, config: Any = None, name: str | None = None, **overrides: Any):
        """Deploy the cloud model or a device's current sub-model across (emulated) edge nodes.

        The model is cut into contiguous stages from per-block latencies each stage actor measures
        on its node (see ``docs/serving.md``); the session is logged under ``serving/<name>/``.

        Args:
            model: ``"cloud"`` or the name of a device that holds a sub-model.
            nodes: Nodes in pipeline order: CPU shares, or mappings with ``cpu_share`` and
                optionally ``memory_bytes`` / ``label`` (default: the serving config's nodes).
            objective: ``"throughput"`` or ``"latency"`` (default: the config's).
            scheduler: ``"amp4ec"``, ``"round_robin"`` or ``"least_loaded"`` (default: the config's).
            config: A :class:`~eclm.serving.ServingConfig` or dict (default: the platform's ``serving``).
            name: Session name for logs (default ``<model>-<k>``).
            **overrides: Further ``ServingConfig`` fields, e.g. ``micro_batch_size=4``.

        Returns:
            The running :class:`~eclm.runtime.serving.Deployment` (close it, or use it as a context manager).

        Raises:
            RuntimeError: If the platform is not started.
            ValueError: If ``model`` is unknown, the device holds no sub-model, or a setting is invalid.
        """
        from eclm.runtime.platform_serving import deploy, serving_config

        serving = serving_config(self.cfg, config, nodes, objective, scheduler, overrides)
        deployment = deploy(self._co(), self.cfg, self.tracker, model, serving,
                            name or f"{model}-{len(self._deployments) + 1}")
        self._deployments.append(deployment)
        return deployment
