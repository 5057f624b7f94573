"""Shared pieces of the Ray-based suites (``platform_overhead``, ``scale``): settings, campaign
configs, and the Ray-free reference: the platform's cycle coordinator over in-process services.

Nothing here imports Ray: the suites import ``eclm.platform`` / ``eclm.runtime`` inside their
functions, so discovering the suites (and importing this module) never starts or loads Ray.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from benchmarks.local_campaign import local_coordinator
from eclm.campaign.coordinator import CycleCoordinator
from eclm.campaign.messages import CloudSnapshot
from eclm.campaign.results import CycleResult
from eclm.campaign.strategy import ServerStrategy
from eclm.config import PlatformConfig
from eclm.pipelines.edge_service import EdgeService

TIERS = (0.3, 0.55, 0.8)


class CampaignShape(BaseModel):
    """The campaign the Ray suites run: a narrow ResNet-18 on digits, label-skewed drifting devices."""

    model_config = ConfigDict(extra="forbid")

    channels: tuple[int, int, int, int] = Field((16, 32, 64, 128), description="resnet18 stage widths")
    modules_per_layer: int = Field(4, ge=2, le=16)
    classes_per_device: int = Field(2, ge=1, le=10)
    samples_per_device: tuple[int, int] = Field((50, 150), description="local training set size range")
    offline_epochs: int = Field(12, ge=0, description="offline stage-1 epochs before the cycles (0 = no pretraining)")
    enhance_epochs: int = Field(2, ge=0, description="offline stage-2 epochs")
    adapt_epochs: int = Field(3, ge=1, description="local epochs per cycle")
    accepting_merge: bool = Field(
        False, description="threshold acceptance with tolerances of 1.0: every merge passes validation on the first candidate "
                           "(isolates orchestration cost from the greedy exclusion search)")


def smoke_campaign(**overrides) -> CampaignShape:
    """A seconds-long campaign for the smoke mode: tiny ResNet, few samples, no pretraining."""
    return CampaignShape(**{"channels": (8, 8, 16, 16), "modules_per_layer": 2, "samples_per_device": (20, 30),
                            "offline_epochs": 0, "enhance_epochs": 0, "adapt_epochs": 1, **overrides})


class OverheadBenchConfig(BaseModel):
    """Settings of the ``platform_overhead`` suite."""

    model_config = ConfigDict(extra="forbid")

    campaign: CampaignShape = Field(default_factory=CampaignShape)
    devices: int = Field(4, ge=1, description="devices of the campaign whose cycles are timed")
    cycles: int = Field(3, ge=1, description="timed cycles")
    threads: list[int] = Field(default_factory=lambda: [1], min_length=1, description="torch threads per process compared")
    repeats: int = Field(4, ge=1, description="timed adapt calls per side and thread count (after one warm-up each)")
    matmul_size: int = Field(512, ge=16, description="square matmul size of the FLOP/s reference")
    matmul_repeats: int = Field(10, ge=1, description="matmuls per FLOP/s sample (median of 5 samples)")
    merge_scaling: list[int] = Field(default_factory=lambda: [2, 4, 8], description="update counts of the merge-cost probe")

    @classmethod
    def for_mode(cls, mode: str) -> OverheadBenchConfig:
        """Preset for ``"quick"``, ``"full"`` or ``"smoke"`` (seconds, for tests).

        Raises:
            ValueError: For an unknown mode.
        """
        if mode == "quick":
            return cls()
        if mode == "full":
            return cls(devices=8, cycles=4, threads=[1, 2], repeats=8, merge_scaling=[2, 4, 8, 16])
        if mode == "smoke":
            # The cycles' merge accepts its first candidate; the merge-cost probe still searches.
            return cls(campaign=smoke_campaign(accepting_merge=True), devices=1, cycles=1, repeats=1, matmul_size=64,
                       matmul_repeats=1, merge_scaling=[1])
        raise ValueError(f"mode must be 'quick', 'full' or 'smoke', got {mode!r}")


class ScaleBenchConfig(BaseModel):
    """Settings of the ``scale`` suite."""

    model_config = ConfigDict(extra="forbid")

    campaign: CampaignShape = Field(
        default_factory=lambda: CampaignShape(offline_epochs=0, enhance_epochs=0, accepting_merge=True))
    device_counts: list[int] = Field(default_factory=lambda: [4, 16], min_length=1, description="device counts, ascending")
    modes: list[str] = Field(default_factory=lambda: ["actor", "pooled"], min_length=1, description="edge placement modes")
    pool_size: int = Field(2, ge=1, description="edge worker actors in pooled mode")
    cycles: int = Field(2, ge=1, description="timed cycles per run")
    memory_limit_gib: float = Field(16.0, gt=0, description="skip a run whose predicted tree PSS exceeds this")
    time_budget_s: float = Field(300.0, gt=0, description="skip runs predicted to end after this many suite seconds")
    registered: int = Field(200, ge=0, description="protocol run: virtual devices registered (pooled; 0 = no run)")
    served: int = Field(50, ge=1, description="protocol run: devices served per cycle (a new slice each cycle)")
    protocol_cycles: int = Field(2, ge=1, description="protocol run: cycles")
    compute_devices: int = Field(3, ge=0, description="served devices whose adaptation is repeated in a plain process")
    idle_counts: list[int] = Field(default_factory=lambda: [0, 50, 200],
                                   description="idle-memory runs: resting devices in one pool (ascending; [] = none)")

    @model_validator(mode="after")
    def _valid(self) -> ScaleBenchConfig:
        bad = [m for m in self.modes if m not in ("actor", "pooled")]
        if bad:
            raise ValueError(f"modes must be 'actor' or 'pooled', got {bad}")
        if self.device_counts != sorted(set(self.device_counts)) or self.device_counts[0] < 1:
            raise ValueError(f"device_counts must be ascending, distinct and >= 1, got {self.device_counts}")
        if self.idle_counts != sorted(set(self.idle_counts)) or any(n < 0 for n in self.idle_counts):
            raise ValueError(f"idle_counts must be ascending, distinct and >= 0, got {self.idle_counts}")
        if self.registered and self.served > self.registered:
            raise ValueError(f"served ({self.served}) must not exceed registered ({self.registered})")
        return self

    @classmethod
    def for_mode(cls, mode: str) -> ScaleBenchConfig:
        """Preset for ``"quick"``, ``"full"`` or ``"smoke"`` (seconds, for tests).

        Raises:
            ValueError: For an unknown mode.
        """
        if mode == "quick":  # under 10 minutes on the shared 2-core machine
            return cls(device_counts=[4, 8])
        if mode == "full":  # issue #13's protocol: 1000 registered, 250 served per cycle
            return cls(device_counts=[4, 16, 64, 128, 256], cycles=3, time_budget_s=900.0, registered=1000,
                       served=250, protocol_cycles=3, compute_devices=4, idle_counts=[0, 50, 200, 1000])
        if mode == "smoke":
            return cls(campaign=smoke_campaign(accepting_merge=True), device_counts=[1], modes=["actor"], cycles=1,
                       time_budget_s=120.0, registered=4, served=2, protocol_cycles=1, compute_devices=1,
                       idle_counts=[2])  # one idle run: the code path, no fit
        raise ValueError(f"mode must be 'quick', 'full' or 'smoke', got {mode!r}")


def campaign_config(shape: CampaignShape, num_devices: int, workdir: Path, *, name: str, threads: int = 1,
                    pool_size: int | None = None, tracking_uri: str | None = None, seed: int = 0) -> PlatformConfig:
    """The platform config of a benchmark campaign.

    Args:
        shape: Model, data and adaptation settings.
        num_devices: Devices (resource tiers cycle through :data:`TIERS`).
        workdir: Checkpoints (and the default MLflow store) go here.
        name: Campaign name (actor names derive from it, so it must be unique per live campaign).
        threads: torch threads per actor.
        pool_size: Pooled edge mode with this many workers (``None``: one actor per device).
        tracking_uri: MLflow store; ``None`` disables tracking.
        seed: Campaign seed.
    """
    # Accepting: the threshold rule with tolerances of 1.0 never rejects (the paired rule's max_drop would).
    merge = {"acceptance": "threshold", "tolerance": 1.0, "device_tolerance": 1.0} if shape.accepting_merge else {}
    return PlatformConfig.from_dict({
        "name": name, "seed": seed, "workdir": str(workdir), "steps_per_cycle": 1,
        "data": {"source": "digits", "num_devices": num_devices, "classes_per_device": shape.classes_per_device,
                 "samples_per_device": list(shape.samples_per_device), "seed": seed,
                 "drift": {"corruptions": ["gaussian_noise", "contrast", "rotation", "pixelate"], "severity": [2, 4],
                           "change_every": 1}},
        "backbone": {"name": "resnet18", "kwargs": {"channels": list(shape.channels)},
                     "modules_per_layer": shape.modules_per_layer},
        "offline": {"epochs": shape.offline_epochs, "enhance_epochs": shape.enhance_epochs, "batch_size": 32,
                    "classes_per_subtask": shape.classes_per_device, "seed": seed},
        "devices": [{"name": f"dev{i:03d}", "params_fraction": TIERS[i % len(TIERS)]} for i in range(num_devices)],
        "adaptation": {"epochs": shape.adapt_epochs},
        "merge": merge,
        # Ray's CPU counts are scheduling tokens: tiny reservations let every actor be placed on a
        # 2-core machine, and the actors then share the cores like processes do.
        "ray": {"edge_cpus": 0.01, "cloud_cpus": 0.5, "threads_per_actor": threads, "edge_pool_size": pool_size,
                "call_timeout_s": 3600},
        "tracking": {"tracking_uri": tracking_uri} if tracking_uri else {"enabled": False},
    })


class StageClock:
    """Seconds spent in each service method, per method name (in-process instrumentation only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def timed(self, service: Any) -> _TimedService:
        """``service`` with every method call timed into this clock."""
        return _TimedService(service, self)


class _TimedService:
    """Forwards every attribute to the service; method calls add their duration to the clock."""

    def __init__(self, service: Any, clock: StageClock) -> None:
        self._service, self._clock = service, clock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._service, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._clock.seconds[name] = self._clock.seconds.get(name, 0.0) + time.perf_counter() - t0

        return timed


def local_campaign(cfg: PlatformConfig, pretrained: CloudSnapshot, threads: int = 1,
                   strategy: ServerStrategy | None = None) -> tuple[CycleCoordinator, StageClock]:
    """The platform's cycle coordinator over in-process services, without Ray or logging.

    The cloud starts from ``pretrained``; the devices' calls are timed into the returned clock
    (the platform's ``derive`` phase includes the devices' importance summaries, which are
    device-side work). ``strategy``: the server side (default: eclm's).
    """
    clock = StageClock()
    devices = {d.name: (lambda i=i: clock.timed(EdgeService(cfg, i, threads))) for i, d in enumerate(cfg.devices)}
    return local_coordinator(cfg, pretrained, devices, threads=threads, strategy=strategy), clock


def in_process_cycle(coordinator: CycleCoordinator, clock: StageClock,
                     devices: list[str] | None = None) -> tuple[dict, CycleResult]:
    """One ``run_cycle`` of an in-process coordinator (:func:`local_campaign`), devices served one
    after another.

    Returns:
        ``({"durations": {"summary", "derive", "ship", "adapt", "merge"}, "decision", "bytes_up",
        "bytes_down"}, the cycle's result)``: seconds per phase as the coordinator measures them,
        ``summary`` = the devices' importance summaries (part of ``derive``).

    Raises:
        RuntimeError: If a device or the cloud failed in the cycle.
    """
    clock.seconds.clear()
    result = coordinator.run_cycle(devices, reason="benchmark")
    if result.failures:
        raise RuntimeError(f"in-process cycle {result.round} failed: {result.failures}")
    durations = {"summary": clock.seconds.get("summary", 0.0)}
    durations |= {k: result.durations[k] for k in ("derive", "ship", "adapt", "merge")}
    return ({"durations": durations, "decision": result.merge.decision, "bytes_down": sum(result.bytes_down.values()),
             "bytes_up": sum(result.bytes_up.values())}, result)
