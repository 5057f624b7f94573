"""Settings of the adaptation-quality benchmark (eclm against NA, LA, FedAvg and HeteroFL).

One :class:`AdaptationBenchConfig` describes the whole experiment; :meth:`platform_config` turns
it into the eclm :class:`~eclm.config.PlatformConfig` of one (label skew, seed) run, so every
method runs on exactly the data, devices, drift schedule, backbone and adaptation
hyper-parameters the platform itself would use.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eclm.config import PlatformConfig

METHOD_NAMES = ("na", "la", "fedavg", "fedavg_codec", "heterofl", "heterofl_codec", "eclm")
DIGITS_CLASSES = 10


class AdaptationBenchConfig(BaseModel):
    """What the adaptation benchmark runs (presets: :meth:`for_mode`, :meth:`tiny`)."""

    model_config = ConfigDict(extra="forbid")

    label_skews: list[int] = Field(
        default_factory=lambda: [2, 5], min_length=1,
        description="settings: classes per device (m of the 10 digit classes)",
    )
    seeds: int = Field(3, ge=1, le=20, description="repetitions (data split, streams, init, training)")
    num_devices: int = Field(8, ge=2, description="devices in the population")
    devices_per_cycle: int | None = Field(
        None, ge=1, description="devices sampled per cycle (same sample for every method); None = all"
    )
    cycles: int = Field(10, ge=1, le=200, description="adaptation cycles (one drift step each)")
    arrival_from: int = Field(6, ge=1, description="on-arrival gains are averaged over the cycles from this one on")
    tiers: list[float] = Field(
        default_factory=lambda: [1.0, 0.55, 0.8], min_length=1,
        description="device resource tiers: sub-model parameter cap as a share of the cloud model; device i gets tiers[i % len]",
    )
    memory_mb: list[float | None] = Field(
        default_factory=lambda: [20.0, None, None],
        description="per tier, memory for training in MB (None: unconstrained); 20 MB cannot train the full "
                    "model (its dense training needs about 38 MiB: eclm.modules.trainable.TrainingMemory) and is "
                    "about the least in which the narrowest width-prefix slice (FedAvg, HeteroFL) still fits",
    )
    channels: tuple[int, int, int, int] = Field((16, 32, 64, 128), description="resnet18 stage widths of the cloud model")
    modules_per_layer: int = Field(4, ge=2, le=16, description="modules N per module layer")
    samples_per_device: tuple[int, int] = Field((50, 150), description="local training set size range (paper: 50-150)")
    corruptions: list[str] = Field(
        default_factory=lambda: ["gaussian_noise", "gaussian_blur", "contrast", "brightness", "rotation", "pixelate",
                                 "inversion"],
        min_length=1, description="environments devices drift through (one new environment per cycle)",
    )
    severity: tuple[int, int] = Field((2, 4), description="corruption severity range")
    offline_epochs: int = Field(12, ge=0, description="offline stage-1 epochs on the cloud's proxy data")
    enhance_epochs: int = Field(2, ge=0, description="offline stage-2 (ability-enhancing) epochs")
    epoch_budgets: list[int] = Field(
        default_factory=lambda: [1, 3], min_length=1,
        description="adaptation budgets: local epochs per cycle (paper: 3); every method runs each, same for all")
    lr: float = Field(0.01, gt=0, description="local SGD learning rate, same for every method")
    batch_size: int = Field(16, ge=2, description="local batch size (paper: 16), same for every method")
    methods: list[str] = Field(default_factory=lambda: list(METHOD_NAMES), min_length=1, description="methods to run")
    workers: int = Field(0, ge=0, le=16, description="parallel worker processes (0 = run jobs in this process)")
    memory_probe: bool = Field(True, description="measure peak RSS of one adaptation run per sub-model in a subprocess")
    workdir: Path | None = Field(None, description="where cloud checkpoints go (None = a temporary directory)")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in METHOD_NAMES]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {list(METHOD_NAMES)}")
        return list(dict.fromkeys(v))

    @field_validator("label_skews")
    @classmethod
    def _skews_in_range(cls, v: list[int]) -> list[int]:
        bad = [m for m in v if not 1 <= m <= DIGITS_CLASSES]
        if bad:
            raise ValueError(f"label_skews must lie in 1..{DIGITS_CLASSES}, got {bad}")
        return v

    @field_validator("tiers")
    @classmethod
    def _tiers_in_range(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not 0 < t <= 1]
        if bad:
            raise ValueError(f"tiers must lie in (0, 1], got {bad}")
        return v

    @field_validator("epoch_budgets")
    @classmethod
    def _positive_epochs(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v):
            raise ValueError(f"epoch_budgets must be positive, got {v}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _consistent(self) -> AdaptationBenchConfig:
        if len(self.memory_mb) != len(self.tiers):
            raise ValueError(f"memory_mb needs one entry per tier ({len(self.tiers)}), got {len(self.memory_mb)}")
        if self.devices_per_cycle is not None and self.devices_per_cycle > self.num_devices:
            raise ValueError(
                f"devices_per_cycle ({self.devices_per_cycle}) exceeds num_devices ({self.num_devices})"
            )
        low, high = self.samples_per_device
        if not 2 <= low <= high:
            raise ValueError(f"samples_per_device must be (min, max) with 2 <= min <= max, got {self.samples_per_device}")
        return self

    @property
    def sampled(self) -> int:
        """Devices taking part in each cycle."""
        return self.devices_per_cycle or self.num_devices

    def platform_config(self, label_skew: int, seed: int, workdir: Path, epochs: int | None = None,
                        adaptation: dict | None = None) -> PlatformConfig:
        """The platform config of one (label skew, seed) run.

        Args:
            label_skew: Classes per device.
            seed: Seed of data split, streams, initialisation and training.
            workdir: Where cloud checkpoints go.
            epochs: Local epochs per cycle (default: the first of :attr:`epoch_budgets`).
            adaptation: A method's own adaptation settings (how it trains and what its exchange sends;
                the training hyper-parameters stay the shared ones).

        Raises:
            ValueError: If ``label_skew`` is not one of :attr:`label_skews`.
        """
        if label_skew not in self.label_skews:
            raise ValueError(f"label_skew {label_skew} is not one of the configured {self.label_skews}")
        shared = {"epochs": epochs or self.epoch_budgets[0], "lr": self.lr, "batch_size": self.batch_size}
        return PlatformConfig.from_dict({
            "name": f"bench-skew{label_skew}-seed{seed}",
            "seed": seed,
            "workdir": str(workdir),
            "steps_per_cycle": 1,
            "data": {
                "source": "digits", "num_devices": self.num_devices, "classes_per_device": label_skew,
                "samples_per_device": list(self.samples_per_device), "replace_fraction": 0.5, "seed": seed,
                # change_every=1: every cycle brings a new environment, so "previous environment"
                # (forgetting) is always the one the device adapted to in the cycle before.
                "drift": {"corruptions": self.corruptions, "severity": list(self.severity), "change_every": 1},
            },
            "backbone": {"name": "resnet18", "kwargs": {"channels": list(self.channels)},
                         "modules_per_layer": self.modules_per_layer},
            "offline": {"epochs": self.offline_epochs, "enhance_epochs": self.enhance_epochs, "batch_size": 32,
                        "classes_per_subtask": label_skew, "seed": seed},
            "devices": [self._device(i) for i in range(self.num_devices)],
            "adaptation": (adaptation or {}) | shared,
            "tracking": {"enabled": False},
        })

    def _device(self, i: int) -> dict:
        tier = i % len(self.tiers)
        device = {"name": f"dev{i:03d}", "params_fraction": self.tiers[tier]}
        return device | ({"memory_mb": self.memory_mb[tier]} if self.memory_mb[tier] is not None else {})

    @classmethod
    def for_mode(cls, mode: str) -> AdaptationBenchConfig:
        """Preset for ``"quick"`` (one label skew, 2 seeds, 8 devices, all every cycle), ``"full"``
        (issue #11's protocol: 2 and 5 classes, 3 seeds, 25 of 100 devices per cycle) or ``"smoke"``
        (:meth:`tiny` with 3 devices, 2 per cycle). Quick and full run 10 cycles and both epoch budgets.

        Raises:
            ValueError: For an unknown mode.
        """
        if mode == "smoke":  # tiny, with fewer devices: the suite's code path in seconds
            return cls(**{**cls.tiny().model_dump(), "num_devices": 3, "devices_per_cycle": 2})
        if mode == "quick":
            return cls(label_skews=[2], seeds=2, num_devices=8, workers=2)
        if mode == "full":
            return cls(seeds=3, num_devices=100, devices_per_cycle=25, workers=2)
        raise ValueError(f"mode must be 'quick', 'full' or 'smoke', got {mode!r}")

    @classmethod
    def tiny(cls) -> AdaptationBenchConfig:
        """Seconds-long setting exercising every code path (for tests)."""
        return cls(label_skews=[2], seeds=1, num_devices=4, devices_per_cycle=3, cycles=2, arrival_from=2,
                   tiers=[0.7, 1.0], memory_mb=[None, None], channels=(8, 8, 16, 16), modules_per_layer=2,
                   samples_per_device=(20, 30), corruptions=["gaussian_noise", "contrast"], offline_epochs=1,
                   enhance_epochs=0, epoch_budgets=[1], workers=0, memory_probe=False)
