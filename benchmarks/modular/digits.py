"""The digits benchmark data: cloud proxy share, and one label-skewed device.

sklearn's ``load_digits`` (1797 8x8 images, no download) upsampled bilinearly to 32x32, grey
replicated to 3 channels, values in [0, 1]. As in the paper's setting (ECLM, arXiv 2311.11083; docs/architecture.md) 30% of
the data is the cloud's proxy set and 70% is spread over devices; the benchmark's device holds
two classes of the device share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_MAX_INK = 16.0  # load_digits stores each pixel as an ink count in 0..16


@dataclass
class DigitsSplit:
    """Cloud and device data of one seed; images ``(N, 3, 32, 32)`` in [0, 1], labels ``(N,)``."""

    proxy_x: Tensor
    proxy_y: Tensor
    val_x: Tensor
    val_y: Tensor
    device_train_x: Tensor
    device_train_y: Tensor
    device_test_x: Tensor
    device_test_y: Tensor


def load_digits_images(size: int = 32) -> tuple[Tensor, Tensor]:
    """All 1797 digits as ``(N, 3, size, size)`` float images in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / _MAX_INK).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    return x.repeat(1, 3, 1, 1).contiguous(), torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


def split_digits(
    x: Tensor,
    y: Tensor,
    *,
    seed: int,
    proxy_fraction: float,
    proxy_val_fraction: float,
    device_classes: Sequence[int],
    device_train_fraction: float,
    max_device_samples: int | None = None,
) -> DigitsSplit:
    """Split into cloud proxy (train / validation) and one device's train / test samples.

    Args:
        x, y: All images and labels.
        seed: Seed of the random split.
        proxy_fraction: Share of all samples given to the cloud.
        proxy_val_fraction: Share of the proxy samples held out for offline validation.
        device_classes: Classes the device holds; it gets every device-share sample of them
            (up to ``max_device_samples``).
        device_train_fraction: Share of the device's samples used for importance and fine-tuning;
            the rest is its test set.
        max_device_samples: Optional cap on the device's samples.

    Returns:
        The :class:`DigitsSplit`.

    Raises:
        ValueError: If a part would be empty.
    """
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen)
    n_proxy = int(round(proxy_fraction * len(x)))
    proxy, device_share = perm[:n_proxy], perm[n_proxy:]
    n_val = int(round(proxy_val_fraction * len(proxy)))
    val, train = proxy[:n_val], proxy[n_val:]
    mine = device_share[torch.isin(y[device_share], torch.as_tensor(list(device_classes)))]
    if max_device_samples is not None:
        mine = mine[:max_device_samples]
    n_train = int(round(device_train_fraction * len(mine)))
    dev_train, dev_test = mine[:n_train], mine[n_train:]
    for name, part in {"proxy train": train, "proxy validation": val, "device train": dev_train,
                       "device test": dev_test}.items():
        if len(part) == 0:
            raise ValueError(f"digits split: the {name} part is empty; adjust the fractions")
    return DigitsSplit(x[train], y[train], x[val], y[val], x[dev_train], y[dev_train], x[dev_test], y[dev_test])


def pair_subtasks(device_classes: Sequence[int], num_classes: int) -> list[list[int]]:
    """Stage-2 sub-tasks: the device's classes, then the other classes in consecutive pairs.

    Sub-tasks are groups of classes that co-occur on devices (ECLM, arXiv 2311.11083; docs/architecture.md); the cloud knows
    the label groups of its devices, so the device's pair is one of them.
    """
    rest = [c for c in range(num_classes) if c not in set(device_classes)]
    return [list(device_classes)] + [rest[i : i + 2] for i in range(0, len(rest), 2)]
