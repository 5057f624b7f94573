"""Image corruptions that model a device's changing environment (in the spirit of CIFAR-10-C).

Each corruption maps a batch ``(N, C, H, W)`` in ``[0, 1]`` to a batch of the same shape in
``[0, 1]``, at a severity from 1 (mild) to 5 (strong). Randomness (noise, rotation direction) comes
only from the ``torch.Generator`` passed in, so a corruption is a pure function of
``(images, severity, generator state)`` and can be recomputed bit-identically in another process.

Severity parameters are chosen so that, for a fixed generator seed, the mean absolute change to an
image grows with severity for every corruption (the unit tests check this).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from eclm.data.catalog import CORRUPTION_NAMES, MAX_SEVERITY, MIN_SEVERITY

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


# One parameter per severity 1..5 (index severity - 1).
_NOISE_STD = (0.04, 0.08, 0.12, 0.17, 0.24)
_BLUR_SIGMA = (0.6, 0.9, 1.3, 1.8, 2.5)
_CONTRAST_FACTOR = (0.75, 0.6, 0.45, 0.3, 0.15)
_BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)
_ROTATION_DEGREES = (8.0, 16.0, 24.0, 32.0, 40.0)
# Pixel block side as a fraction of the image side (32 px: blocks of 2, 3, 4, 6 and 9 px).
_PIXELATE_BLOCK = (0.0625, 0.1, 0.14, 0.2, 0.28)
_INVERSION_BLEND = (0.2, 0.4, 0.6, 0.8, 1.0)


def none(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """The clean environment: returns a copy of the images unchanged."""
    return images.clone()


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Additive i.i.d. Gaussian pixel noise (sensor noise), clipped to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + _NOISE_STD[severity - 1] * noise).clamp_(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur (defocus), reflect-padded so borders do not darken."""
    sigma = _BLUR_SIGMA[severity - 1]
    # The kernel covers +-3 sigma but may not exceed the image, or reflect padding would fail.
    radius = min(int(math.ceil(3 * sigma)), min(images.shape[-2:]) - 1)
    if radius < 1:
        return images.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    blurred = F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)
    return blurred.clamp_(0.0, 1.0)


def contrast(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Pull every pixel towards its image's mean intensity (low contrast, haze)."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * _CONTRAST_FACTOR[severity - 1] + mean).clamp_(0.0, 1.0)


def brightness(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Add a constant to every pixel (over-exposure), clipped to [0, 1]."""
    return (images + _BRIGHTNESS_SHIFT[severity - 1]).clamp_(0.0, 1.0)


def rotation(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image about its centre by the severity's angle, direction drawn per image.

    Bilinear sampling with border replication, so no black corners are introduced.
    """
    count = images.shape[0]
    if count == 0:
        return images.clone()
    signs = torch.randint(0, 2, (count,), generator=generator).to(images.dtype) * 2 - 1
    angles = signs * math.radians(_ROTATION_DEGREES[severity - 1])
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    rotated = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return rotated.clamp_(0.0, 1.0)


def pixelate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each square block of pixels by its mean (low resolution).

    Blocks are anchored at the top-left corner with a whole-pixel side, so a larger severity always
    means strictly coarser blocks (resampling to a fractional grid would alias and break that).
    """
    height, width = images.shape[-2:]
    # The floor severity + 1 keeps blocks strictly growing with severity on small images too.
    block = max(int(round(min(height, width) * _PIXELATE_BLOCK[severity - 1])), severity + 1)
    small = F.avg_pool2d(images, block, stride=block, ceil_mode=True)
    large = small.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
    return large[..., :height, :width].contiguous().clamp_(0.0, 1.0)


def inversion(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Blend towards the negative image (severity 5 is a full inversion ``1 - x``)."""
    blend = _INVERSION_BLEND[severity - 1]
    return ((1.0 - blend) * images + blend * (1.0 - images)).clamp_(0.0, 1.0)


#: Every corruption by name. ``"none"`` is the clean environment.
CORRUPTIONS: dict[str, Corruption] = {
    "none": none,
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "brightness": brightness,
    "rotation": rotation,
    "pixelate": pixelate,
    "inversion": inversion,
}
assert tuple(CORRUPTIONS) == CORRUPTION_NAMES, "eclm.data.catalog.CORRUPTION_NAMES is out of date"


def check_corruption(name: str, severity: int) -> None:
    """Validate a corruption name and severity.

    Raises:
        ValueError: If ``name`` is not in :data:`CORRUPTIONS` (the message lists the valid names) or
            ``severity`` is not an int in 1..5.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid corruptions: {sorted(CORRUPTIONS)}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int)
        or not MIN_SEVERITY <= severity <= MAX_SEVERITY
    ):
        raise ValueError(f"severity must be an int in {MIN_SEVERITY}..{MAX_SEVERITY}, got {severity!r}")


def apply_corruption(
    images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Corrupt a batch of images.

    Args:
        images: ``float32`` ``(N, C, H, W)`` in [0, 1]; not modified.
        name: A key of :data:`CORRUPTIONS`.
        severity: 1 (mild) .. 5 (strong).
        generator: Source of randomness; ``None`` means a fresh generator seeded with 0, so the call
            is still deterministic.

    Returns:
        A new tensor of the same shape and dtype, values in [0, 1].

    Raises:
        ValueError: For an unknown name, a bad severity, or images that are not ``(N, C, H, W)``.
        TypeError: If ``images`` is not a floating-point tensor.
    """
    check_corruption(name, severity)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating-point torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return CORRUPTIONS[name](images, severity, generator)
