"""The strategy base for where a labelled image set comes from.

One axis of variation (the origin of the images) gets one abstract base; each concrete origin lives
in its own small file. Every source returns the same validated :class:`LabelledImages`, already at
the configured channel count and spatial size, so nothing downstream knows where data came from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch

from eclm.data._image_tensor import match_channels, resize
from eclm.data.labelled_images import LabelledImages


class DatasetSource(ABC):
    """Loads one labelled image set from somewhere local (never from the network).

    Args:
        image_size: Output height and width in pixels (images are resized bilinearly).
        channels: Output channel count, 1 (grey) or 3 (RGB).

    Raises:
        ValueError: If ``image_size`` < 1 or ``channels`` is not 1 or 3.
    """

    def __init__(self, *, image_size: int = 32, channels: int = 3) -> None:
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.image_size = image_size
        self.channels = channels

    @abstractmethod
    def load(self) -> LabelledImages:
        """Read the whole set into memory.

        Returns:
            Images ``(N, channels, image_size, image_size)`` float32 in [0, 1] and int64 labels.

        Raises:
            FileNotFoundError: If a file or directory the source needs does not exist.
        """

    def _finish(
        self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, class_names: Sequence[str]
    ) -> LabelledImages:
        """Bring ``(N, C, H, W)`` [0, 1] images to the configured shape and validate the result."""
        images = images.float()
        # Change channel count where the tensor is smallest: drop channels before resizing, add after.
        if images.shape[1] > self.channels:
            images = resize(match_channels(images, self.channels), self.image_size)
        else:
            images = match_channels(resize(images, self.image_size), self.channels)
        return LabelledImages(images.contiguous(), labels.long(), num_classes, tuple(class_names))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, channels={self.channels})"


def require_path(path: str | Path, what: str, *, directory: bool = False) -> Path:
    """Return ``path`` as a :class:`Path`, or fail with a message naming it.

    Args:
        path: File or directory that must exist.
        what: What the path is for, used in the message (e.g. ``"npz file"``).
        directory: Whether the path must be a directory rather than a file.

    Raises:
        FileNotFoundError: If the path does not exist or is of the wrong kind.
    """
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"{what} not found: {str(resolved)!r} does not exist")
    if directory and not resolved.is_dir():
        raise FileNotFoundError(f"{what} must be a directory, but {str(resolved)!r} is not one")
    if not directory and not resolved.is_file():
        raise FileNotFoundError(f"{what} must be a file, but {str(resolved)!r} is not one")
    return resolved
