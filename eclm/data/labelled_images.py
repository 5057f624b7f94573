"""The one in-memory dataset type of the data layer.

Every source returns a :class:`LabelledImages`, every partition and stream hands them out. Keeping a
single validated type means the rest of the platform can rely on its invariants without checking
again: images are ``float32`` in ``[0, 1]`` with shape ``(N, C, H, W)``, labels are ``int64`` with
shape ``(N,)`` and lie in ``[0, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class LabelledImages:
    """A labelled image set held in memory.

    Attributes:
        images: ``float32`` tensor, shape ``(N, C, H, W)``, values in ``[0, 1]``.
        labels: ``int64`` tensor, shape ``(N,)``, values in ``[0, num_classes)``.
        num_classes: Number of classes of the *dataset* (not only those present in this subset).
        class_names: One name per class, ``len(class_names) == num_classes``.

    Raises:
        TypeError: If a tensor has the wrong dtype.
        ValueError: If shapes, value ranges or class names are inconsistent.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.float32:
            raise TypeError(f"images must be a float32 torch.Tensor, got {_describe(self.images)}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64:
            raise TypeError(f"labels must be an int64 torch.Tensor, got {_describe(self.labels)}")
        if self.images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape (N,) with N={self.images.shape[0]} matching images, "
                f"got {tuple(self.labels.shape)}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names must have num_classes={self.num_classes} entries, got {len(self.class_names)}"
            )
        if len(self) > 0:
            low, high = float(self.images.min()), float(self.images.max())
            if low < 0.0 or high > 1.0 or not np.isfinite([low, high]).all():
                raise ValueError(f"images must lie in [0, 1], got values in [{low}, {high}]")
            if int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes:
                raise ValueError(
                    f"labels must lie in [0, {self.num_classes}), got "
                    f"[{int(self.labels.min())}, {int(self.labels.max())}]"
                )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        """Number of image channels ``C``."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Spatial size ``(H, W)`` in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> LabelledImages:
        """Rows ``indices`` as a new set with the same class metadata.

        Args:
            indices: Row indices into this set, any order, repeats allowed.

        Returns:
            A new :class:`LabelledImages` with ``len(indices)`` rows (tensors are copies).
        """
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return LabelledImages(self.images[index], self.labels[index], self.num_classes, self.class_names)

    def with_images(self, images: torch.Tensor) -> LabelledImages:
        """The same labels with replacement images (e.g. corrupted ones) of the same length."""
        return LabelledImages(images, self.labels, self.num_classes, self.class_names)

    def class_counts(self) -> np.ndarray:
        """Samples per class, shape ``(num_classes,)``, ``int64``."""
        return np.bincount(self.labels.numpy(), minlength=self.num_classes).astype(np.int64)

    @staticmethod
    def empty_like(reference: LabelledImages) -> LabelledImages:
        """A zero-row set with ``reference``'s image shape and class metadata."""
        shape = (0, *reference.images.shape[1:])
        return LabelledImages(
            torch.zeros(shape, dtype=torch.float32),
            torch.zeros(0, dtype=torch.int64),
            reference.num_classes,
            reference.class_names,
        )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of dtype {value.dtype}"
    return type(value).__name__
