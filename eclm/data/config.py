"""Typed configuration of the data layer (composed into the platform's single config).

A wrong key, a value out of range or a field that does not fit the chosen source fails when the
config is loaded, with a message naming the field, rather than deep inside an experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eclm.data.catalog import (
    CORRUPTION_NAMES as CORRUPTIONS,
)
from eclm.data.catalog import (
    DIGITS_NUM_CLASSES,
    MAX_SEVERITY,
    MIN_SEVERITY,
    TORCHVISION_NUM_CLASSES,
    normalise_torchvision_name,
)

SourceKind = Literal["digits", "image_folder", "npz", "torchvision"]

# Which source uses which optional field, and the value meaning "not given".
_SOURCE_FIELDS: dict[str, tuple[tuple[SourceKind, ...], Any]] = {
    "root": (("image_folder", "torchvision"), None),
    "path": (("npz",), None),
    "name": (("torchvision",), None),
    "train": (("torchvision",), True),
    "images_key": (("npz",), "x"),
    "labels_key": (("npz",), "y"),
}
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "digits": (),
    "image_folder": ("root",),
    "npz": ("path",),
    "torchvision": ("name", "root"),
}


class DriftConfig(BaseModel):
    """How device environments change over time (see :class:`~eclm.data.drift.DriftSchedule`)."""

    model_config = ConfigDict(extra="forbid")

    corruptions: list[str] = Field(
        default_factory=lambda: [name for name in CORRUPTIONS if name != "none"],
        min_length=1,
        description="Corruption names environments are drawn from ('none' is the clean environment).",
    )
    severity: tuple[int, int] = Field(
        (MIN_SEVERITY, MAX_SEVERITY), description="Inclusive (min, max) corruption severity, within 1..5."
    )
    change_every: int = Field(10, ge=1, description="Time steps per environment segment.")
    order: Literal["random", "listed"] = Field(
        "random", description="'random': draw each segment's corruption; 'listed': take them in list order."
    )
    class_shift: bool = Field(
        False, description="Whether each segment also restricts the device to half its classes."
    )
    test_size: int | None = Field(
        None, ge=1, description="Cap on a device's held-out test set per environment (None: all of it)."
    )

    @field_validator("corruptions")
    @classmethod
    def _known_corruptions(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; valid corruptions: {sorted(CORRUPTIONS)}")
        return names

    @field_validator("severity")
    @classmethod
    def _severity_range(cls, severity: tuple[int, int]) -> tuple[int, int]:
        low, high = severity
        if not MIN_SEVERITY <= low <= high <= MAX_SEVERITY:
            raise ValueError(f"severity must be (min, max) with 1 <= min <= max <= 5, got {severity}")
        return severity


class DataConfig(BaseModel):
    """Where the data comes from, how it is split between cloud and devices, and how it drifts."""

    model_config = ConfigDict(extra="forbid")

    source: SourceKind = Field(
        "digits", description="Dataset source kind; 'digits' is embedded and needs no files."
    )
    root: Path | None = Field(None, description="Directory of an image_folder or torchvision dataset.")
    path: Path | None = Field(None, description="The .npz file of an npz source.")
    name: str | None = Field(None, description="torchvision dataset name, e.g. 'CIFAR10', 'MNIST'.")
    train: bool = Field(True, description="torchvision: training split if true, test split otherwise.")
    images_key: str = Field("x", min_length=1, description="npz: archive key of the images.")
    labels_key: str = Field("y", min_length=1, description="npz: archive key of the labels.")
    image_size: int = Field(32, ge=4, le=1024, description="Image height and width in pixels after loading.")
    channels: Literal[1, 3] = Field(3, description="Image channels after loading (1 grey, 3 RGB).")

    cloud_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="Share of each class given to the cloud.")
    cloud_val_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of the cloud data held out for validation."
    )
    num_devices: int = Field(10, ge=1, description="Number of edge devices.")
    classes_per_device: int | None = Field(
        2, ge=1, description="Label skew: classes per device (m of n). Exclusive with dirichlet_alpha."
    )
    dirichlet_alpha: float | None = Field(
        None,
        gt=0.0,
        description="Label skew: Dirichlet concentration over classes. Exclusive with classes_per_device.",
    )
    samples_per_device: tuple[int, int] = Field(
        (50, 150), description="Inclusive (min, max) local training set size."
    )
    test_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of device data held out for device tests."
    )
    replace_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of local data replaced per time step."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Environment drift over time.")
    seed: int = Field(0, ge=0, description="Seed of the split, the schedules and the streams.")

    @model_validator(mode="before")
    @classmethod
    def _dirichlet_replaces_default_skew(cls, data: Any) -> Any:
        # classes_per_device has a default (the paper's m=2); asking for a Dirichlet skew without
        # mentioning classes_per_device means "use Dirichlet instead", not "both".
        if (
            isinstance(data, dict)
            and data.get("dirichlet_alpha") is not None
            and "classes_per_device" not in data
        ):
            return {**data, "classes_per_device": None}
        return data

    @field_validator("samples_per_device")
    @classmethod
    def _sample_bounds(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        low, high = bounds
        if not 1 <= low <= high:
            raise ValueError(f"samples_per_device must be (min, max) with 1 <= min <= max, got {bounds}")
        return bounds

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        self._check_source_fields()
        if (self.classes_per_device is None) == (self.dirichlet_alpha is None):
            raise ValueError(
                "set exactly one of classes_per_device and dirichlet_alpha, got "
                f"classes_per_device={self.classes_per_device}, dirichlet_alpha={self.dirichlet_alpha}"
            )
        num_classes = self.known_num_classes()
        if (
            self.classes_per_device is not None
            and num_classes is not None
            and self.classes_per_device > num_classes
        ):
            raise ValueError(
                f"classes_per_device={self.classes_per_device} exceeds the {num_classes} classes of source "
                f"{self.source!r}{f' ({self.name})' if self.name else ''}"
            )
        return self

    def _check_source_fields(self) -> None:
        missing = [field for field in _REQUIRED_FIELDS[self.source] if getattr(self, field) is None]
        if missing:
            raise ValueError(f"source {self.source!r} requires field(s) {missing}")
        for field, (kinds, unset) in _SOURCE_FIELDS.items():
            if self.source not in kinds and getattr(self, field) != unset:
                raise ValueError(
                    f"field {field!r} is only used by source(s) {list(kinds)}, not {self.source!r}"
                )
        if self.source == "torchvision" and self.name is not None:
            normalise_torchvision_name(self.name)

    def known_num_classes(self) -> int | None:
        """Classes of the configured source when known without loading it (digits, torchvision), else ``None``."""
        if self.source == "digits":
            return DIGITS_NUM_CLASSES
        if self.source == "torchvision" and self.name is not None:
            return TORCHVISION_NUM_CLASSES[normalise_torchvision_name(self.name)]
        return None
