"""Shared conversions from raw image arrays to the data layer's canonical tensor form.

Sources differ in how they store images (NHWC uint8 for CIFAR, NHW for MNIST, NCHW for SVHN,
0..16 floats for the digits). These helpers bring them all to ``float32`` ``(N, C, H, W)`` in
``[0, 1]`` with the configured channel count and spatial size.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Layout = Literal["auto", "nchw", "nhwc"]

# Channel counts an image array may plausibly have; used to tell NCHW from NHWC.
_CHANNEL_COUNTS = (1, 3, 4)


def to_nchw(array: np.ndarray, layout: Layout = "auto", *, what: str = "images") -> np.ndarray:
    """Reorder an image array to ``(N, C, H, W)``.

    Args:
        array: Shape ``(N, H, W)`` (grey) or ``(N, C, H, W)`` / ``(N, H, W, C)``.
        layout: ``"nchw"``, ``"nhwc"`` or ``"auto"`` (decided from which axis holds 1, 3 or 4).
        what: Name used in error messages.

    Returns:
        A view or copy of ``array`` with shape ``(N, C, H, W)``.

    Raises:
        ValueError: If the rank is not 3 or 4, or ``"auto"`` cannot decide the layout.
    """
    if array.ndim == 3:
        return array[:, None, :, :]
    if array.ndim != 4:
        raise ValueError(f"{what} must have 3 (N,H,W) or 4 (N,C,H,W / N,H,W,C) dims, got shape {array.shape}")
    if layout == "auto":
        first, last = array.shape[1] in _CHANNEL_COUNTS, array.shape[3] in _CHANNEL_COUNTS
        if first == last:
            raise ValueError(
                f"cannot tell whether {what} of shape {array.shape} is NCHW or NHWC; pass layout='nchw' or 'nhwc'"
            )
        layout = "nchw" if first else "nhwc"
    if layout == "nhwc":
        return np.transpose(array, (0, 3, 1, 2))
    if layout != "nchw":
        raise ValueError(f"layout must be 'auto', 'nchw' or 'nhwc', got {layout!r}")
    return array


def to_unit_float(array: np.ndarray, *, what: str = "images") -> torch.Tensor:
    """Scale pixel values to ``float32`` in ``[0, 1]``.

    Integer arrays are read as 0..255. Float arrays already in ``[0, 1]`` are kept; float arrays with
    a maximum above 1 are read as 0..255 (a common way of saving ``uint8`` images as floats).

    Args:
        array: Any-shape numeric array.
        what: Name used in error messages.

    Returns:
        A ``float32`` tensor of the same shape with values in ``[0, 1]``.

    Raises:
        TypeError: If the array is not numeric.
        ValueError: If values are negative, non-finite or above 255.
    """
    if array.dtype == np.bool_:
        return torch.from_numpy(array.astype(np.float32))
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{what} must be an integer or float array, got dtype {array.dtype}")
    values = array.astype(np.float32)
    if values.size == 0:
        return torch.from_numpy(values)
    low, high = float(values.min()), float(values.max())
    if not np.isfinite([low, high]).all():
        raise ValueError(f"{what} contain non-finite values")
    if low < 0.0 or high > 255.0:
        raise ValueError(f"{what} must lie in [0, 1] or [0, 255], got values in [{low}, {high}]")
    if np.issubdtype(array.dtype, np.integer) or high > 1.0:
        values = values / 255.0
    return torch.from_numpy(np.ascontiguousarray(values)).clamp_(0.0, 1.0)


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``(N, C, H, W)`` images to ``channels`` (1 or 3) channels.

    Grey is replicated to RGB; RGB becomes grey by the ITU-R 601 luma weights; an alpha channel
    (C=4) is dropped first.

    Raises:
        ValueError: If ``channels`` is not 1 or 3, or the input has an unsupported channel count.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if images.shape[1] == 4:
        images = images[:, :3]
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)
    raise ValueError(f"images must have 1, 3 or 4 channels, got {images.shape[1]}")


def resize(images: torch.Tensor, image_size: int, *, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` images to ``(N, C, image_size, image_size)``.

    Bilinear interpolation is a convex combination of pixels, so ``[0, 1]`` is preserved; the clamp
    only removes float round-off. Work is done ``chunk`` images at a time to bound peak memory on
    large sets (60k MNIST images at 32x32x3 are ~0.7 GB already).

    Raises:
        ValueError: If ``image_size`` < 1.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if tuple(images.shape[-2:]) == (image_size, image_size):
        return images
    out = images.new_empty((images.shape[0], images.shape[1], image_size, image_size))
    for start in range(0, images.shape[0], chunk):
        # antialias only matters when shrinking; it avoids aliasing from e.g. 96x96 down to 32x32.
        out[start : start + chunk] = F.interpolate(
            images[start : start + chunk],
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    return out.clamp_(0.0, 1.0)


def labels_to_tensor(labels: np.ndarray, num_images: int, *, what: str = "labels") -> torch.Tensor:
    """Validate a label array against ``num_images`` and return it as ``int64`` ``(N,)``.

    Raises:
        ValueError: If the labels are not 1-D, not integral, negative or of the wrong length.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{what} must be 1-D (N,), got shape {labels.shape}")
    if labels.shape[0] != num_images:
        raise ValueError(f"{what} has {labels.shape[0]} entries but there are {num_images} images")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError(f"{what} must be whole numbers, got non-integral floats")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {labels.dtype}")
    as_int = labels.astype(np.int64)
    if as_int.size and as_int.min() < 0:
        raise ValueError(f"{what} must be >= 0, got minimum {as_int.min()}")
    return torch.from_numpy(as_int)
