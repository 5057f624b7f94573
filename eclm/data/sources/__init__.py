"""Where labelled image sets come from: one strategy base, one file per concrete source.

Names are imported on first use (PEP 562), so importing one light submodule (for example
a config) does not pull in torch through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eclm._lazy import lazy_exports

if TYPE_CHECKING:
    from eclm.data.catalog import DIGITS_NUM_CLASSES, TORCHVISION_NUM_CLASSES, normalise_torchvision_name
    from eclm.data.sources.base import DatasetSource, require_path
    from eclm.data.sources.digits import DigitsSource
    from eclm.data.sources.image_folder import IMAGE_EXTENSIONS, ImageFolderSource
    from eclm.data.sources.npz import NpzSource
    from eclm.data.sources.torchvision_dataset import TorchvisionSource

_EXPORTS: dict[str, tuple[str, str]] = {
    "DatasetSource": ("eclm.data.sources.base", "DatasetSource"),
    "require_path": ("eclm.data.sources.base", "require_path"),
    "DIGITS_NUM_CLASSES": ("eclm.data.catalog", "DIGITS_NUM_CLASSES"),
    "DigitsSource": ("eclm.data.sources.digits", "DigitsSource"),
    "IMAGE_EXTENSIONS": ("eclm.data.sources.image_folder", "IMAGE_EXTENSIONS"),
    "ImageFolderSource": ("eclm.data.sources.image_folder", "ImageFolderSource"),
    "NpzSource": ("eclm.data.sources.npz", "NpzSource"),
    "TORCHVISION_NUM_CLASSES": ("eclm.data.catalog", "TORCHVISION_NUM_CLASSES"),
    "TorchvisionSource": ("eclm.data.sources.torchvision_dataset", "TorchvisionSource"),
    "normalise_torchvision_name": ("eclm.data.catalog", "normalise_torchvision_name"),
}

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
