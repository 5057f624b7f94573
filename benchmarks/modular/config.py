"""Settings of the modular-core benchmark: presets for quick and full mode, and a tiny one for tests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DIGITS_CLASSES = 10


class BackboneCase(BaseModel):
    """One timm model measured by the compression benchmark."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="name shown in tables and plots")
    timm_name: str = Field(description="timm model name")
    timm_kwargs: dict = Field(default_factory=dict, description="kwargs for timm.create_model")


class CompressionSettings(BaseModel):
    """Sub-model size/speed versus parameter budget, per backbone."""

    model_config = ConfigDict(extra="forbid")

    backbones: list[BackboneCase] = Field(min_length=1, description="models to decompose")
    fractions: list[float] = Field(min_length=1, description="parameter budgets as fractions of the full model")
    modules_per_layer: int = Field(default=4, ge=2, description="modules N per module layer")
    input_size: tuple[int, int, int] = Field(default=(3, 32, 32), description="(C, H, W) of the input")
    batch_size: int = Field(default=32, ge=1, description="images per timed forward pass")
    repeats: int = Field(default=7, ge=1, description="timed samples per model (median reported)")
    warmup: int = Field(default=2, ge=0, description="untimed passes per model before timing")
    min_sample_seconds: float = Field(default=0.05, ge=0, description="minimum duration of one timed sample")
    importance_samples: int = Field(default=64, ge=1, description="random inputs the selector scores")
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0 < f <= 1]
        if bad:
            raise ValueError(f"fractions must lie in (0, 1], got {bad}")
        return sorted(set(v))


class SelectionSettings(BaseModel):
    """Derived sub-model versus width-prefix slice on a 2-class device of the digits data."""

    model_config = ConfigDict(extra="forbid")

    channels: tuple[int, int, int, int] | None = Field(
        default=(16, 32, 64, 128), description="resnet18 stage widths; None = real widths (64..512)"
    )
    modules_per_layer: int = Field(default=4, ge=2)
    prefix_groups: int = Field(default=2, ge=1, description="groups per layer of the width-prefix slice that sets the budget")
    proxy_fraction: float = Field(default=0.3, gt=0, lt=1, description="share of the data the cloud holds")
    proxy_val_fraction: float = Field(default=0.2, gt=0, lt=1, description="share of the proxy data held out for validation")
    device_classes: tuple[int, int] = Field(default=(3, 8), description="the device's two classes")
    device_train_fraction: float = Field(default=0.5, gt=0, lt=1, description="share of device samples used for importance / fine-tuning")
    max_device_samples: int | None = Field(default=None, ge=4, description="cap on the device's samples (None = all of its classes in the device share)")
    epochs: int = Field(default=12, ge=1, description="offline stage-1 epochs")
    enhance_epochs: int = Field(default=2, ge=0, description="offline stage-2 epochs")
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2e-3, gt=0, description="offline AdamW learning rate")
    seeds: int = Field(default=2, ge=1, description="repetitions with different data split and init")
    finetune_epochs: int = Field(default=0, ge=0, description="device fine-tune epochs (0 = skip)")
    # The paper's local setting (ECLM, arXiv 2311.11083; docs/architecture.md). lr 0.01 was tried first: on the real-width
    # resnet18 it diverged to a constant prediction within 3 epochs, even on the training samples.
    finetune_lr: float = Field(default=0.001, gt=0, description="device SGD learning rate")
    finetune_momentum: float = Field(default=0.9, ge=0, lt=1, description="device SGD momentum")
    finetune_batch_size: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> SelectionSettings:
        a, b = self.device_classes
        if a == b or not (0 <= a < DIGITS_CLASSES and 0 <= b < DIGITS_CLASSES):
            raise ValueError(f"device_classes must be two distinct digits 0..9, got {self.device_classes}")
        if self.prefix_groups >= self.modules_per_layer:
            raise ValueError(
                f"prefix_groups ({self.prefix_groups}) must be below modules_per_layer ({self.modules_per_layer})"
            )
        return self


class ModulesBenchConfig(BaseModel):
    """Full configuration of the ``modules`` suite."""

    model_config = ConfigDict(extra="forbid")

    compression: CompressionSettings
    selection: SelectionSettings

    @classmethod
    def for_mode(cls, mode: str) -> ModulesBenchConfig:
        """The preset for ``"quick"`` (< ~3 min on 2 cores), ``"full"`` (< ~15 min) or ``"smoke"`` (:meth:`tiny`).

        Raises:
            ValueError: For an unknown mode.
        """
        if mode == "smoke":
            return cls.tiny()
        backbones = [
            BackboneCase(label="resnet18", timm_name="resnet18", timm_kwargs={"num_classes": 10}),
            # vit_tiny's real width and depth (192 dims, 3 heads, 12 blocks) with 4x4 patches so
            # that a 32x32 image gives 64 tokens, as in CIFAR-scale ViTs.
            BackboneCase(label="vit_tiny (patch 4, 32px)", timm_name="vit_tiny_patch16_224",
                         timm_kwargs={"num_classes": 10, "img_size": 32, "patch_size": 4}),
            BackboneCase(label="convnext_atto", timm_name="convnext_atto", timm_kwargs={"num_classes": 10}),
        ]
        fractions = [0.25, 0.5, 0.75, 1.0]
        if mode == "quick":
            return cls(
                compression=CompressionSettings(backbones=backbones, fractions=fractions, repeats=7),
                selection=SelectionSettings(seeds=2, epochs=20, enhance_epochs=3, finetune_epochs=0),
            )
        if mode == "full":
            return cls(
                compression=CompressionSettings(backbones=backbones, fractions=fractions, repeats=15,
                                                min_sample_seconds=0.2),
                selection=SelectionSettings(channels=None, seeds=3, epochs=25, enhance_epochs=3,
                                            finetune_epochs=3),
            )
        raise ValueError(f"mode must be 'quick', 'full' or 'smoke', got {mode!r}")

    @classmethod
    def tiny(cls) -> ModulesBenchConfig:
        """A seconds-long setting exercising every code path (for tests)."""
        return cls(
            compression=CompressionSettings(
                backbones=[BackboneCase(label="test_vit", timm_name="test_vit",
                                        timm_kwargs={"num_classes": 10, "img_size": 32})],
                fractions=[0.5, 1.0], batch_size=4, repeats=1, warmup=0, min_sample_seconds=0.0,
                importance_samples=8,
            ),
            selection=SelectionSettings(channels=(8, 8, 16, 16), seeds=1, epochs=1, enhance_epochs=1,
                                        max_device_samples=40, finetune_epochs=1),
        )
