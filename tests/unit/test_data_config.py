"""DataConfig: defaults, skew options, source fields, bounds, and round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from eclm.data import DataConfig, DriftConfig


def test_defaults_follow_the_paper_setting() -> None:
    cfg = DataConfig()

    assert (cfg.source, cfg.cloud_fraction, cfg.classes_per_device, cfg.dirichlet_alpha) == (
        "digits",
        0.3,
        2,
        None,
    )
    assert cfg.samples_per_device == (50, 150) and cfg.replace_fraction == 0.5 and cfg.image_size == 32


def test_dirichlet_alone_replaces_the_default_class_skew() -> None:
    cfg = DataConfig(dirichlet_alpha=0.3)

    assert cfg.classes_per_device is None and cfg.dirichlet_alpha == 0.3


@pytest.mark.parametrize(
    "cfg",
    [
        DataConfig(),
        DataConfig(source="npz", path=Path("/data/set.npz"), images_key="img", dirichlet_alpha=1.0),
        DataConfig(
            source="torchvision", name="CIFAR100", root=Path("/data"), classes_per_device=20, train=False
        ),
        DataConfig(
            source="image_folder",
            root=Path("/imgs"),
            drift=DriftConfig(corruptions=["none"], severity=(2, 2)),
        ),
    ],
)
def test_dump_and_validate_round_trip(cfg: DataConfig) -> None:
    assert DataConfig.model_validate(cfg.model_dump()) == cfg
    assert DataConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch": 16}, "batch"),
        ({"drift": {"speed": 2}}, "speed"),
        ({"classes_per_device": 11}, "classes_per_device=11"),
        (
            {"source": "torchvision", "name": "MNIST", "root": "/d", "classes_per_device": 12},
            "exceeds the 10",
        ),
        ({"classes_per_device": 2, "dirichlet_alpha": 0.5}, "exactly one"),
        ({"classes_per_device": None}, "exactly one"),
        ({"samples_per_device": (150, 50)}, "samples_per_device"),
        ({"samples_per_device": (0, 5)}, "samples_per_device"),
        ({"cloud_fraction": 1.0}, "cloud_fraction"),
        ({"cloud_fraction": 0.0}, "cloud_fraction"),
        ({"replace_fraction": 0.0}, "replace_fraction"),
        ({"channels": 2}, "channels"),
        ({"num_devices": 0}, "num_devices"),
        ({"source": "npz"}, "requires field(s) ['path']"),
        ({"source": "torchvision", "root": "/d"}, "requires field(s) ['name']"),
        ({"source": "torchvision", "name": "ImageNet", "root": "/d"}, "unsupported torchvision dataset"),
        ({"source": "digits", "path": "/x.npz"}, "'path' is only used by source(s) ['npz']"),
        ({"source": "image_folder", "root": "/d", "name": "MNIST"}, "'name' is only used"),
        ({"drift": {"corruptions": ["fog"]}}, "fog"),
        ({"drift": {"corruptions": []}}, "corruptions"),
        ({"drift": {"severity": (4, 2)}}, "severity"),
        ({"drift": {"change_every": 0}}, "change_every"),
    ],
)
def test_bad_config_fails_naming_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        DataConfig.model_validate(fields)

    assert message in str(error.value)


def test_validation_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        DataConfig(num_devices=-1)
