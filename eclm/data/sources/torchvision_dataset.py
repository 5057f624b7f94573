"""A torchvision dataset that is already on disk.

Datasets are always constructed with ``download=False``: the platform never touches the network, so
a dataset that is not where ``root`` says becomes a :class:`FileNotFoundError` that names the path
and says downloads are disabled, instead of torchvision's generic ``RuntimeError``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eclm.data._image_tensor import labels_to_tensor, to_nchw, to_unit_float
from eclm.data.catalog import TORCHVISION_SPECS, normalise_torchvision_name
from eclm.data.labelled_images import LabelledImages
from eclm.data.sources.base import DatasetSource

_SPECS = TORCHVISION_SPECS


class TorchvisionSource(DatasetSource):
    """A torchvision dataset read from ``root`` with downloads disabled.

    Args:
        name: Dataset name, e.g. ``"MNIST"``, ``"CIFAR10"``, ``"FashionMNIST"``, ``"SVHN"``
            (case and ``-``/``_`` are ignored).
        root: The directory torchvision would have downloaded into.
        train: Training split if true, test split otherwise.
        image_size: Output height and width in pixels.
        channels: 1 or 3.

    Raises:
        ValueError: If ``name`` is not supported.
    """

    def __init__(
        self, name: str, root: str | Path, train: bool = True, *, image_size: int = 32, channels: int = 3
    ) -> None:
        super().__init__(image_size=image_size, channels=channels)
        self._key = normalise_torchvision_name(name)
        self.name = _SPECS[self._key].class_name
        self.root = Path(root)
        self.train = train

    def load(self) -> LabelledImages:
        """Read the split into memory (directly from the dataset's arrays, no per-item transforms).

        Returns:
            Images ``(N, channels, image_size, image_size)`` in [0, 1] and int64 labels.

        Raises:
            FileNotFoundError: If ``root`` or the dataset files under it are missing.
        """
        from torchvision import datasets

        spec = _SPECS[self._key]
        root = self.root.expanduser()
        hint = f"downloads are disabled (download=False); place the {spec.class_name} files there first"
        if not root.is_dir():
            raise FileNotFoundError(f"torchvision dataset root {str(root)!r} does not exist; {hint}")
        split = {"split": "train" if self.train else "test"} if spec.split_argument else {"train": self.train}
        try:
            dataset = getattr(datasets, spec.class_name)(str(root), download=False, **split)
        except RuntimeError as error:  # torchvision's "Dataset not found ... use download=True"
            raise FileNotFoundError(
                f"{spec.class_name} not found under {str(root)!r} ({error}); {hint}"
            ) from error
        data = np.asarray(dataset.data.numpy() if isinstance(dataset.data, torch.Tensor) else dataset.data)
        raw_labels = getattr(dataset, "targets", None)
        if raw_labels is None:
            raw_labels = dataset.labels
        labels = np.asarray(raw_labels.numpy() if isinstance(raw_labels, torch.Tensor) else raw_labels)
        images = to_unit_float(to_nchw(data, spec.layout, what=f"{spec.class_name} images"))
        names = list(getattr(dataset, "classes", None) or [str(index) for index in range(spec.num_classes)])
        return self._finish(images, labels_to_tensor(labels, images.shape[0]), spec.num_classes, names)

    def __repr__(self) -> str:
        return (
            f"TorchvisionSource(name={self.name!r}, root={str(self.root)!r}, train={self.train}, "
            f"image_size={self.image_size}, channels={self.channels})"
        )
