"""Class-per-subfolder image directories (the ``ImageFolder`` convention).

``root/<class name>/<image file>``: class indices follow the sorted subfolder names, so the same
directory always yields the same labels. Files are read with Pillow and resized to the configured
size; nothing is cached, so this is meant for the small local sets an edge experiment uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eclm.data.labelled_images import LabelledImages
from eclm.data.sources.base import DatasetSource, require_path

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


class ImageFolderSource(DatasetSource):
    """Images under ``root/<class>/``, one subfolder per class.

    Args:
        root: Directory whose subfolders are the classes.
        image_size: Output height and width in pixels.
        channels: 1 (images converted to grey) or 3 (converted to RGB).

    Raises:
        ValueError: Via the base class for a bad ``image_size`` or ``channels``.
    """

    def __init__(self, root: str | Path, *, image_size: int = 32, channels: int = 3) -> None:
        super().__init__(image_size=image_size, channels=channels)
        self.root = Path(root)

    def load(self) -> LabelledImages:
        """Read every image file below ``root``.

        Returns:
            Images ``(N, channels, image_size, image_size)`` in [0, 1]; labels index sorted class names.

        Raises:
            FileNotFoundError: If ``root`` does not exist or is not a directory.
            ValueError: If there are no class subfolders, a class folder holds no image, or a file
                cannot be decoded.
        """
        from PIL import Image, UnidentifiedImageError

        root = require_path(self.root, "image folder root", directory=True)
        class_dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
        if not class_dirs:
            raise ValueError(
                f"image folder {str(root)!r} has no class subfolders (expected root/<class>/<image>)"
            )
        mode = "L" if self.channels == 1 else "RGB"
        pixels: list[np.ndarray] = []
        labels: list[int] = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(
                p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                raise ValueError(
                    f"class folder {str(class_dir)!r} holds no images with extensions {sorted(IMAGE_EXTENSIONS)}"
                )
            for file in files:
                try:
                    with Image.open(file) as image:
                        # Resizing in Pillow per file keeps memory at N x image_size^2 whatever the originals.
                        resized = image.convert(mode).resize(
                            (self.image_size, self.image_size), Image.Resampling.BILINEAR
                        )
                        pixels.append(np.asarray(resized, dtype=np.uint8))
                except (UnidentifiedImageError, OSError) as error:
                    raise ValueError(f"cannot read image {str(file)!r}: {error}") from error
                labels.append(label)
        array = np.stack(pixels)
        if array.ndim == 3:
            array = array[:, :, :, None]
        images = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).float() / 255.0
        return self._finish(
            images, torch.tensor(labels, dtype=torch.int64), len(class_dirs), [p.name for p in class_dirs]
        )

    def __repr__(self) -> str:
        return f"ImageFolderSource(root={str(self.root)!r}, image_size={self.image_size}, channels={self.channels})"
