"""Where labelled image sets come from: one strategy base, one file per concrete source."""

from eclm.data.sources.base import DatasetSource, require_path
from eclm.data.sources.digits import DIGITS_NUM_CLASSES, DigitsSource
from eclm.data.sources.image_folder import IMAGE_EXTENSIONS, ImageFolderSource
from eclm.data.sources.npz import NpzSource
from eclm.data.sources.torchvision_dataset import (
    TORCHVISION_NUM_CLASSES,
    TorchvisionSource,
    normalise_torchvision_name,
)

__all__ = [
    "DIGITS_NUM_CLASSES",
    "IMAGE_EXTENSIONS",
    "TORCHVISION_NUM_CLASSES",
    "DatasetSource",
    "DigitsSource",
    "ImageFolderSource",
    "NpzSource",
    "TorchvisionSource",
    "normalise_torchvision_name",
    "require_path",
]
