"""Images and labels stored as two arrays in a NumPy ``.npz`` archive.

The archive is opened with ``allow_pickle=False`` so a file from elsewhere cannot run code. Images
may be NCHW, NHWC or NHW (grey), ``uint8`` (0..255) or float ([0, 1], or [0, 255] saved as float);
the layout is detected from which axis has 1, 3 or 4 entries unless given explicitly.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from eclm.data._image_tensor import Layout, labels_to_tensor, to_nchw, to_unit_float
from eclm.data.labelled_images import LabelledImages
from eclm.data.sources.base import DatasetSource, require_path


class NpzSource(DatasetSource):
    """An ``.npz`` archive holding an image array and a label array.

    Args:
        path: The ``.npz`` file.
        images_key: Archive key of the images.
        labels_key: Archive key of the integer labels ``(N,)``.
        class_names_key: Optional archive key of a string array of class names; when absent the
            names are the class indices and ``num_classes = max(label) + 1``.
        layout: ``"auto"``, ``"nchw"`` or ``"nhwc"``.
        image_size: Output height and width in pixels.
        channels: 1 or 3.

    Raises:
        ValueError: For a bad ``layout`` (and via the base class for size/channels).
    """

    def __init__(
        self,
        path: str | Path,
        images_key: str = "x",
        labels_key: str = "y",
        *,
        class_names_key: str = "class_names",
        layout: Layout = "auto",
        image_size: int = 32,
        channels: int = 3,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels)
        if layout not in ("auto", "nchw", "nhwc"):
            raise ValueError(f"layout must be 'auto', 'nchw' or 'nhwc', got {layout!r}")
        self.path = Path(path)
        self.images_key = images_key
        self.labels_key = labels_key
        self.class_names_key = class_names_key
        self.layout: Layout = layout

    def load(self) -> LabelledImages:
        """Read the archive.

        Returns:
            Images ``(N, channels, image_size, image_size)`` in [0, 1] and int64 labels.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``images_key`` or ``labels_key`` is not in the archive (the message lists
                the keys present), the file is not a valid archive, arrays have mismatched lengths, a bad
                shape or out-of-range values, or the class names disagree with the labels.
        """
        path = require_path(self.path, "npz file")
        try:
            archive = np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError) as error:
            raise ValueError(f"cannot read {str(path)!r} as an .npz archive: {error}") from error
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{str(path)!r} is a single .npy array, not an .npz archive with named arrays")
        with archive:
            keys = sorted(archive.files)
            for field, key in (("images_key", self.images_key), ("labels_key", self.labels_key)):
                if key not in keys:
                    raise ValueError(
                        f"{field}={key!r} is not in {str(path)!r}; the archive holds keys {keys}"
                    )
            try:
                raw_images = archive[self.images_key]
                raw_labels = archive[self.labels_key]
                raw_names = archive[self.class_names_key] if self.class_names_key in keys else None
            except ValueError as error:  # object arrays need pickle, which is disabled on purpose
                raise ValueError(f"cannot read arrays from {str(path)!r} without pickle: {error}") from error
        images = to_unit_float(to_nchw(raw_images, self.layout, what=f"images {self.images_key!r}"))
        labels = labels_to_tensor(raw_labels, images.shape[0], what=f"labels {self.labels_key!r}")
        num_classes = int(labels.max()) + 1 if len(labels) else 1
        if raw_names is None:
            names = [str(index) for index in range(num_classes)]
        else:
            names = [str(name) for name in np.asarray(raw_names).reshape(-1)]
            if len(names) < num_classes:
                raise ValueError(
                    f"{self.class_names_key!r} lists {len(names)} class names but labels go up to {num_classes - 1}"
                )
            num_classes = len(names)
        return self._finish(images, labels, num_classes, names)

    def __repr__(self) -> str:
        return (
            f"NpzSource(path={str(self.path)!r}, images_key={self.images_key!r}, labels_key={self.labels_key!r}, "
            f"image_size={self.image_size}, channels={self.channels})"
        )
