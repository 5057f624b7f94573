"""What the data layer offers, as plain constants (no torch): corruption names and severities,
dataset class counts. The config validates against these without importing the heavy modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MIN_SEVERITY = 1
MAX_SEVERITY = 5

#: Corruption names, ``"none"`` first (the clean environment); :data:`eclm.data.corruptions.CORRUPTIONS`
#: maps exactly these names to their functions.
CORRUPTION_NAMES: tuple[str, ...] = (
    "none", "gaussian_noise", "gaussian_blur", "contrast", "brightness", "rotation", "pixelate", "inversion",
)

#: Classes in scikit-learn's handwritten digits.
DIGITS_NUM_CLASSES = 10


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to load one torchvision dataset class from disk."""

    class_name: str
    num_classes: int
    # How the dataset object stores its pixel array (`.data`).
    layout: Literal["nchw", "nhwc"]
    # MNIST-style datasets take `train=bool`; SVHN/STL10 take `split="train"|"test"`.
    split_argument: bool = False


TORCHVISION_SPECS: dict[str, TorchvisionSpec] = {
    "mnist": TorchvisionSpec("MNIST", 10, "nchw"),
    "fashionmnist": TorchvisionSpec("FashionMNIST", 10, "nchw"),
    "kmnist": TorchvisionSpec("KMNIST", 10, "nchw"),
    "usps": TorchvisionSpec("USPS", 10, "nchw"),
    "cifar10": TorchvisionSpec("CIFAR10", 10, "nhwc"),
    "cifar100": TorchvisionSpec("CIFAR100", 100, "nhwc"),
    "svhn": TorchvisionSpec("SVHN", 10, "nchw", split_argument=True),
    "stl10": TorchvisionSpec("STL10", 10, "nchw", split_argument=True),
}

#: Classes of every supported torchvision dataset, keyed by normalised name (lower case, no ``-``/``_``).
TORCHVISION_NUM_CLASSES: dict[str, int] = {key: spec.num_classes for key, spec in TORCHVISION_SPECS.items()}


def normalise_torchvision_name(name: str) -> str:
    """Canonical key for a dataset name: ``"Fashion-MNIST"`` and ``"fashion_mnist"`` both give ``"fashionmnist"``.

    Raises:
        ValueError: If the name is not a supported dataset (the message lists the supported ones).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TORCHVISION_SPECS:
        supported = sorted(spec.class_name for spec in TORCHVISION_SPECS.values())
        raise ValueError(f"unsupported torchvision dataset name {name!r}; supported: {supported}")
    return key
