"""The data layer: sources, cloud/device partition, drifting device streams, corruptions, replay.

Pure Python/torch/numpy (no Ray): everything here can be built identically in any process from a
:class:`DataConfig` and a seed. Images are ``float32`` ``(N, C, H, W)`` in ``[0, 1]``, labels ``int64``
``(N,)``. Nothing here ever downloads.


Names are imported on first use (PEP 562), so importing one light submodule (for example
a config) does not pull in torch through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eclm._lazy import lazy_exports

if TYPE_CHECKING:
    from eclm.data.config import DataConfig, DriftConfig, SourceKind
    from eclm.data.corruptions import (
        CORRUPTIONS,
        MAX_SEVERITY,
        MIN_SEVERITY,
        apply_corruption,
        check_corruption,
    )
    from eclm.data.device_stream import DeviceStream
    from eclm.data.drift import DriftSchedule, Environment
    from eclm.data.factory import (
        build_device_stream,
        build_schedule,
        build_source,
        build_split,
        device_seed,
        load_dataset,
    )
    from eclm.data.labelled_images import LabelledImages
    from eclm.data.loader import batches, num_batches
    from eclm.data.partition import CloudData, DataSplit, DevicePool, split_cloud_and_devices
    from eclm.data.replay import ReplayBuffer
    from eclm.data.sources import (
        DatasetSource,
        DigitsSource,
        ImageFolderSource,
        NpzSource,
        TorchvisionSource,
    )

_EXPORTS: dict[str, tuple[str, str]] = {
    "DataConfig": ("eclm.data.config", "DataConfig"),
    "DriftConfig": ("eclm.data.config", "DriftConfig"),
    "SourceKind": ("eclm.data.config", "SourceKind"),
    "CORRUPTIONS": ("eclm.data.corruptions", "CORRUPTIONS"),
    "MAX_SEVERITY": ("eclm.data.corruptions", "MAX_SEVERITY"),
    "MIN_SEVERITY": ("eclm.data.corruptions", "MIN_SEVERITY"),
    "apply_corruption": ("eclm.data.corruptions", "apply_corruption"),
    "check_corruption": ("eclm.data.corruptions", "check_corruption"),
    "DeviceStream": ("eclm.data.device_stream", "DeviceStream"),
    "DriftSchedule": ("eclm.data.drift", "DriftSchedule"),
    "Environment": ("eclm.data.drift", "Environment"),
    "build_device_stream": ("eclm.data.factory", "build_device_stream"),
    "build_schedule": ("eclm.data.factory", "build_schedule"),
    "build_source": ("eclm.data.factory", "build_source"),
    "build_split": ("eclm.data.factory", "build_split"),
    "device_seed": ("eclm.data.factory", "device_seed"),
    "load_dataset": ("eclm.data.factory", "load_dataset"),
    "LabelledImages": ("eclm.data.labelled_images", "LabelledImages"),
    "batches": ("eclm.data.loader", "batches"),
    "num_batches": ("eclm.data.loader", "num_batches"),
    "CloudData": ("eclm.data.partition", "CloudData"),
    "DataSplit": ("eclm.data.partition", "DataSplit"),
    "DevicePool": ("eclm.data.partition", "DevicePool"),
    "split_cloud_and_devices": ("eclm.data.partition", "split_cloud_and_devices"),
    "ReplayBuffer": ("eclm.data.replay", "ReplayBuffer"),
    "DatasetSource": ("eclm.data.sources", "DatasetSource"),
    "DigitsSource": ("eclm.data.sources", "DigitsSource"),
    "ImageFolderSource": ("eclm.data.sources", "ImageFolderSource"),
    "NpzSource": ("eclm.data.sources", "NpzSource"),
    "TorchvisionSource": ("eclm.data.sources", "TorchvisionSource"),
}

__all__ = [
    "CORRUPTIONS",
    "MAX_SEVERITY",
    "MIN_SEVERITY",
    "CloudData",
    "DataConfig",
    "DataSplit",
    "DatasetSource",
    "DevicePool",
    "DeviceStream",
    "DigitsSource",
    "DriftConfig",
    "DriftSchedule",
    "Environment",
    "ImageFolderSource",
    "LabelledImages",
    "NpzSource",
    "ReplayBuffer",
    "SourceKind",
    "TorchvisionSource",
    "apply_corruption",
    "batches",
    "build_device_stream",
    "build_schedule",
    "build_source",
    "build_split",
    "check_corruption",
    "device_seed",
    "load_dataset",
    "num_batches",
    "split_cloud_and_devices",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
