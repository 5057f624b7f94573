"""The data layer: sources, cloud/device partition, drifting device streams, corruptions, replay.

Pure Python/torch/numpy (no Ray): everything here can be built identically in any process from a
:class:`DataConfig` and a seed. Images are ``float32`` ``(N, C, H, W)`` in ``[0, 1]``, labels ``int64``
``(N,)``. Nothing here ever downloads.
"""

from eclm.data.config import DataConfig, DriftConfig, SourceKind
from eclm.data.corruptions import CORRUPTIONS, MAX_SEVERITY, MIN_SEVERITY, apply_corruption, check_corruption
from eclm.data.device_stream import DeviceStream
from eclm.data.drift import DriftSchedule, Environment
from eclm.data.factory import build_device_stream, build_schedule, build_source, build_split, device_seed
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
    "num_batches",
    "split_cloud_and_devices",
]
