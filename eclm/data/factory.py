"""Building the data layer's objects from a :class:`~eclm.data.config.DataConfig`.

The one place that maps config fields onto constructors, so every process (driver, cloud actor,
device actors) that holds the same config builds the same source, split, schedules and streams.
"""

from __future__ import annotations

import numpy as np

from eclm.data.config import DataConfig
from eclm.data.device_stream import DeviceStream
from eclm.data.drift import DriftSchedule
from eclm.data.labelled_images import LabelledImages
from eclm.data.partition import DataSplit, DevicePool, split_cloud_and_devices
from eclm.data.sources import DatasetSource, DigitsSource, ImageFolderSource, NpzSource, TorchvisionSource


def build_source(cfg: DataConfig) -> DatasetSource:
    """The source named by ``cfg.source``, with its fields, image size and channels.

    Raises:
        ValueError: If the source kind is unknown (cannot happen for a validated config).
    """
    shape = {"image_size": cfg.image_size, "channels": cfg.channels}
    if cfg.source == "digits":
        return DigitsSource(**shape)
    if cfg.source == "image_folder":
        assert cfg.root is not None  # guaranteed by DataConfig validation
        return ImageFolderSource(cfg.root, **shape)
    if cfg.source == "npz":
        assert cfg.path is not None
        return NpzSource(cfg.path, cfg.images_key, cfg.labels_key, **shape)
    if cfg.source == "torchvision":
        assert cfg.name is not None and cfg.root is not None
        return TorchvisionSource(cfg.name, cfg.root, cfg.train, **shape)
    raise ValueError(f"unknown data source kind {cfg.source!r}")


def build_split(data: LabelledImages, cfg: DataConfig) -> DataSplit:
    """:func:`~eclm.data.partition.split_cloud_and_devices` with the config's settings."""
    return split_cloud_and_devices(
        data,
        num_devices=cfg.num_devices,
        classes_per_device=cfg.classes_per_device,
        dirichlet_alpha=cfg.dirichlet_alpha,
        cloud_fraction=cfg.cloud_fraction,
        cloud_val_fraction=cfg.cloud_val_fraction,
        samples_per_device=cfg.samples_per_device,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
    )


def device_seed(cfg: DataConfig, device_id: int) -> int:
    """A per-device seed derived from ``cfg.seed``, so devices drift independently but reproducibly."""
    return int(np.random.SeedSequence([cfg.seed, device_id]).generate_state(1)[0])


def build_schedule(cfg: DataConfig, pool: DevicePool) -> DriftSchedule:
    """The drift schedule of the device owning ``pool``."""
    drift = cfg.drift
    return DriftSchedule(
        drift.corruptions,
        severity_range=drift.severity,
        change_every=drift.change_every,
        order=drift.order,
        device_classes=pool.classes,
        class_shift=drift.class_shift,
        seed=device_seed(cfg, pool.device_id),
    )


def build_device_stream(data: LabelledImages, pool: DevicePool, cfg: DataConfig) -> DeviceStream:
    """The drifting local data stream of the device owning ``pool``."""
    return DeviceStream(
        data,
        pool,
        build_schedule(cfg, pool),
        replace_fraction=cfg.replace_fraction,
        test_size=cfg.drift.test_size,
        seed=cfg.seed,
    )


_LOADED: dict[str, tuple[LabelledImages, DataSplit]] = {}


def load_dataset(cfg: DataConfig) -> tuple[LabelledImages, DataSplit]:
    """The loaded source and its cloud/device split, loaded once per process and config.

    Every service of one process (the cloud, the devices of a pool, a benchmark's in-process
    devices) reads the same tensors; nothing writes to them, so one copy serves all. Only the
    most recent two configs are kept.
    """
    key = cfg.model_dump_json()
    if key not in _LOADED:
        data = build_source(cfg).load()
        _LOADED[key] = (data, build_split(data, cfg))
        for old in list(_LOADED)[:-2]:
            del _LOADED[old]
    return _LOADED[key]

